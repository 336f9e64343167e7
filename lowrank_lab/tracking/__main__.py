"""`python -m lowrank_lab.tracking <command>`: maintenance of the MLflow store (today: `reconcile`)."""

from __future__ import annotations

import sys

COMMANDS = ("reconcile",)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        given = argv[0] if argv else ""
        print(f"error: command={given!r}: one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from lowrank_lab.tracking.reconcile import main as reconcile

    return reconcile(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

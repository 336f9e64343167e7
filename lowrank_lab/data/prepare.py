"""`make data`: put the task files under `paths.data_dir` — copied from ../shared/data when it sits beside the
repo, otherwise fetched with `datasets` (needs a network) into the same GLUE TSV layout."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lowrank_lab.data.glue import GLUE_TASKS

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def copy_shared(source: Path, out: Path) -> list[str]:
    """Copy every folder of `source` (glue/, gsm8k/, instruct/, text/) that `out` does not have yet."""
    copied = []
    for item in sorted(source.iterdir()):
        target = out / item.name
        if item.is_dir() and not target.exists():
            shutil.copytree(item, target)
            copied.append(item.name)
    return copied


def fetch_glue(out: Path) -> list[str]:
    """Write GLUE train/dev TSVs from `datasets` (a network or a warm cache is needed)."""
    import datasets

    written = []
    for name, task in GLUE_TASKS.items():
        folder = out / "glue" / task.folder
        if folder.exists():
            continue
        ds = datasets.load_dataset("glue", name)
        folder.mkdir(parents=True)
        for split, file in (("train", "train.tsv"), ("validation", "dev.tsv")):
            frame = ds[split].to_pandas().drop(columns=["idx"], errors="ignore")
            frame.to_csv(folder / file, sep="\t", index=False)
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "outputs" / "data"))
    parser.add_argument("--source", default=str(SHARED))
    args = parser.parse_args(argv)
    out, source = Path(args.out), Path(args.source)
    out.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        copied = copy_shared(source, out)
        print(f"data: {out} ({'copied ' + ', '.join(copied) if copied else 'up to date'} from {source})")
        return 0
    try:
        written = fetch_glue(out)
    except Exception as err:
        print(
            f"error: no {source} and `datasets` could not fetch GLUE ({type(err).__name__}); "
            "copy a GLUE TSV folder to outputs/data/glue or pass data.path=",
            file=sys.stderr,
        )
        return 2
    print(f"data: {out} (fetched {', '.join(written) or 'nothing new'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

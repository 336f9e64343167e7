"""Run every `benchmarks/bench_*.py` (or those named with --only) and write one JSON per benchmark plus a
summary to --out. Ratios are measured against a baseline in the same process, never as absolute times."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch


def discover() -> list[str]:
    return sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark module names, e.g. bench_finetune")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    summary = {"machine": machine, "results": {}}
    for name in args.only or discover():
        start = time.perf_counter()
        result = importlib.import_module(f"benchmarks.{name}").main(out)
        result["wall_s"] = round(time.perf_counter() - start, 2)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        summary["results"][name] = result
        print(f"{name}: {json.dumps({k: v for k, v in result.items() if 'ratio' in k or k == 'goal'})}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

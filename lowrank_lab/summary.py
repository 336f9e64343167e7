"""The few lines printed at the end of a run: metric, MLflow run, adapter path, how to look at it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from lowrank_lab.data.task import TaskSpec


def print_summary(
    task: TaskSpec, scores: dict, baseline: dict, run_id: str | None, uri: str | None, adapter: Path
) -> None:
    """Print the job's metrics (`val/…`, `test/…`) beside the trivial baseline (same keys, on the reported split),
    and where the results are."""
    table = Table(title=f"{task.name}: results", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("baseline", justify="right")
    for key, value in sorted(scores.items()):
        base = baseline.get(key)
        table.add_row(key, f"{float(value):.4f}", "" if base is None else f"{base:.4f}")
    console = Console(stderr=False)
    console.print(table)
    console.print(f"adapter:     {adapter}")
    if run_id:
        console.print(f"MLflow run:  {run_id}  ({uri})")
        console.print("see it:      make ui   (then open http://127.0.0.1:5000)")

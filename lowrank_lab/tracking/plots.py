"""The report's standard plots, from MLflow metric histories and run artifacts; one line per configuration
(the report's row labels), averaged over seeds. Each returns a matplotlib Figure (no pyplot state) or None when
the sweep logged nothing to draw.

    val metric vs step              val/<task metric> history                 (every sweep)
    spectral angle vs step / layer  spectral/principal_angle_mean history;    (sad, kd with a SAD-style teacher)
                                    per layer: the jobs' plots/spectral_history.jsonl
    val loss vs accepted steps      val/loss against gate/accepted_steps      (slora)
    paired Δ with its 95 % CI       a claim's or two methods' per-seed deltas (delta_figure; the report's table)
    reported metric by seed         each seed's final value per configuration, joined across configurations, and
                                    the task's trivial baseline (by_seed_figure; the report's run table)
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lab.tracking.results import Sweep, label, primary_metric, task_of

ANGLE, ACCEPTED = "spectral/principal_angle_mean", "gate/accepted_steps"
# written by lowrank_lab.metrics.spectral.SpectralMetrics into each job dir, uploaded with it
SPECTRAL_HISTORY, SPECTRAL_PLOT = "plots/spectral_history.jsonl", "plots/spectral_layers.png"
PLOT_FILES = tuple(
    f"{n}.png"
    for n in (
        "val_metric_vs_step",
        "spectral_angle_vs_step",
        "spectral_angle_vs_layer",
        "val_loss_vs_accepted_steps",
        "delta_ci",
        "reported_by_seed",
    )
)


def config_label(run: Any, group_by: list[str]) -> str:
    """`sad · peft.lora_r=8`: the method bare, other labels as key=value."""
    return " · ".join(label(run, k) if k == "method" else f"{k}={label(run, k)}" for k in group_by)


def history(sweep: Sweep, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    from mlflow.tracking import MlflowClient

    points = MlflowClient(sweep.tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in points)


def _figure(panels: int, title: str) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * panels, 4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _colors(names: Any) -> dict[str, str]:
    """One color per configuration, the same in every panel."""
    return {name: f"C{i % 10}" for i, name in enumerate(sorted(set(names)))}


def _mean_line(ax: Any, curves: list[list[tuple[float, float]]], name: str, color: str) -> None:
    """Mean over seeds at each x (± std band where more than one seed has that x)."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for curve in curves:
        for x, y in curve:
            by_x[x].append(y)
    xs = sorted(by_x)
    mean = np.array([np.mean(by_x[x]) for x in xs])
    std = np.array([np.std(by_x[x], ddof=1) if len(by_x[x]) > 1 else 0.0 for x in xs])
    ax.plot(xs, mean, marker="o", ms=3, color=color, label=f"{name} (n={len(curves)})")
    if len(curves) > 1 and len(xs) > 1:
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2)
    elif len(curves) > 1:  # one x (a single validation): an error bar
        ax.errorbar(xs, mean, yerr=std, color=color, capsize=4)


def metric_vs_step(sweep: Sweep, group_by: list[str], metric: str | None = None) -> Any | None:
    """One panel per task: `metric` (default: the task's reported val metric) against the training step; None when
    no job logged it more than once."""
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # task -> config -> curves
    names: dict[str, str] = {}
    for run in sweep.finished:
        key = metric or primary_metric(run.data.metrics)
        if key is None or key not in run.data.metrics:
            continue
        names[task_of(run)] = key
        curves[task_of(run)][config_label(run, group_by)].append(history(sweep, run.info.run_id, key))
    if all(len(c) <= 1 for by_config in curves.values() for runs in by_config.values() for c in runs):
        return None  # one validation per job: no curve (the per-seed plot shows the values)
    title = metric or "reported validation metric"
    fig, axes = _figure(len(curves), f"{title} vs step (mean ± std over seeds)")
    colors = _colors(name for by_config in curves.values() for name in by_config)
    for ax, task in zip(axes, sorted(curves)):
        for name, runs in sorted(curves[task].items()):
            _mean_line(ax, runs, name, colors[name])
        ax.set(title=task, xlabel="step", ylabel=names[task])
        ax.legend(fontsize=7)
    return fig


def artifact_bytes(sweep: Sweep, run_id: str, path: str) -> bytes | None:
    """The content of one artifact file of a run, or None when the run has no such file."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, tracking_uri=sweep.tracking_uri, dst_path=tmp
            )
            return Path(local).read_bytes()
        except Exception:  # no such artifact (not a spectral run, or not uploaded yet)
            return None


def last_spectral_record(sweep: Sweep, run_id: str) -> dict | None:
    """The last line of a job's plots/spectral_history.jsonl (step, means, per-layer metrics), or None."""
    data = artifact_bytes(sweep, run_id, SPECTRAL_HISTORY)
    lines = data.decode().splitlines() if data else []
    return json.loads(lines[-1]) if lines else None


def short_layer(name: str) -> str:
    """`…encoder.layer.3.attention.self.query` -> `3.query` (tick labels)."""
    numbers = re.findall(r"\.(\d+)\.", f".{name}.")
    return f"{numbers[-1]}.{name.split('.')[-1]}" if numbers else name.split(".")[-1]


def spectral_angle_vs_layer(sweep: Sweep, group_by: list[str]) -> Any | None:
    """Mean principal angle to the teacher target subspace per adapted layer at the last validation."""
    by_config: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in sweep.finished:
        if ANGLE not in run.data.metrics:
            continue
        record = last_spectral_record(sweep, run.info.run_id)
        if record and record.get("layers"):
            angles = {k: v["principal_angle_mean"] for k, v in record["layers"].items()}
            by_config[config_label(run, group_by)].append(angles)
    if not by_config:
        return None
    fig, (ax,) = _figure(1, "principal angle to the target subspace per layer\n(last validation, mean over seeds)")
    layers = list(dict.fromkeys(k for runs in by_config.values() for angles in runs for k in angles))
    for i, (name, runs) in enumerate(sorted(by_config.items())):
        mean = [np.mean([a[k] for a in runs if k in a]) for k in layers]
        ax.plot(range(len(layers)), mean, "o-", color=f"C{i % 10}", label=f"{name} (n={len(runs)})")
    ax.set_xticks(range(len(layers)), [short_layer(k) for k in layers], rotation=60, fontsize=7)
    ax.set(ylabel="mean principal angle (°)", ylim=(0, 90))
    ax.legend(fontsize=7)
    return fig


def val_loss_vs_accepted_steps(sweep: Sweep, group_by: list[str]) -> Any | None:
    """Each validation's val/loss against the gate's accepted steps so far (SLoRA's efficiency curve)."""
    by_config: dict[str, list] = defaultdict(list)
    for run in sweep.finished:
        if ACCEPTED not in run.data.metrics or "val/loss" not in run.data.metrics:
            continue
        accepted = history(sweep, run.info.run_id, ACCEPTED)
        curve = []
        for step, loss in history(sweep, run.info.run_id, "val/loss"):
            before = [a for s, a in accepted if s <= step]
            curve.append((before[-1] if before else 0.0, loss))
        by_config[config_label(run, group_by)].append(curve)
    if not by_config:
        return None
    fig, (ax,) = _figure(1, "validation loss vs accepted steps (mean ± std over seeds)")
    for i, (name, curves) in enumerate(sorted(by_config.items())):
        _mean_line(ax, curves, name, f"C{i % 10}")
    ax.set(xlabel="accepted steps (gate/accepted_steps)", ylabel="val/loss")
    ax.legend(fontsize=7)
    return fig


def delta_figure(rows: list[dict[str, Any]], title: str) -> Any | None:
    """Mean paired Δ per comparison with its bootstrap 95 % CI as an error bar, the paper's Δ as a cross where
    given; rows: {"name", "delta_mean", "ci_low", "ci_high", "paper_delta" (optional)}."""
    rows = [r for r in rows if r.get("delta_mean") is not None and np.isfinite(r["delta_mean"])]
    if not rows:
        return None
    fig, (ax,) = _figure(1, title)
    fig.set_size_inches(6.5, 1.2 + 0.45 * len(rows))
    ys = np.arange(len(rows))[::-1]
    mean = np.array([r["delta_mean"] for r in rows])
    low = np.array([r["ci_low"] if np.isfinite(r.get("ci_low", np.nan)) else r["delta_mean"] for r in rows])
    high = np.array([r["ci_high"] if np.isfinite(r.get("ci_high", np.nan)) else r["delta_mean"] for r in rows])
    ax.errorbar(mean, ys, xerr=[mean - low, high - mean], fmt="o", color="C0", capsize=3, label="ours: mean, 95 % CI")
    paper = [(y, r["paper_delta"]) for y, r in zip(ys, rows) if r.get("paper_delta") is not None]
    if paper:
        ax.plot([p for _, p in paper], [y for y, _ in paper], "x", color="C3", ms=8, label="paper Δ")
    ax.axvline(0.0, color="0.5", lw=0.8)
    ax.set_yticks(ys, [r["name"] for r in rows], fontsize=7)
    ax.set(xlabel="paired Δ (per-seed difference)")
    ax.legend(fontsize=7)
    return fig


def by_seed_figure(values: Any, group_by: list[str]) -> Any | None:
    """One panel per (task, metric): each seed's final value per configuration, a grey line joining one seed's
    values (the pairing the paired Δ uses), the mean as a bar, the trivial baseline (dashed when near); `values` is
    tables.run_values' frame (columns group_by + task, seed, metric, value, baseline, learned)."""
    if values.empty:
        return None
    values = values.assign(config=values[group_by].astype(str).agg(" · ".join, axis=1) if group_by else "all")
    panels = sorted(values.groupby(["task", "metric"]).groups)
    fig, axes = _figure(len(panels), "reported metric per seed (lines join a seed; ×: did not learn)")
    fig.suptitle(fig.get_suptitle(), fontsize=9)
    for ax, (task, metric) in zip(axes, panels):
        rows = values[(values.task == task) & (values.metric == metric)]
        configs = sorted(rows.config.unique())
        x = {c: i for i, c in enumerate(configs)}
        for _, seed_rows in rows.groupby("seed"):
            seed_rows = seed_rows.sort_values("config", key=lambda col: col.map(x))
            ax.plot(seed_rows.config.map(x), seed_rows.value, color="0.6", lw=0.8, marker="o", ms=3)
        for config, group in rows.groupby("config"):
            ax.hlines(group.value.mean(), x[config] - 0.25, x[config] + 0.25, color="C0", lw=2)
            missed = group[group.learned == False]  # noqa: E712 (None: untagged)
            ax.plot([x[config]] * len(missed), missed.value, "x", color="C3", ms=7)
        title = task
        if rows.baseline.notna().any():  # drawn when near the values; far below, it would flatten the differences
            base, low, high = rows.baseline.dropna().mean(), rows.value.min(), rows.value.max()
            title += f" (trivial baseline {base:.4g})"
            if low - (high - low) <= base <= high + (high - low):
                ax.axhline(base, color="C3", ls="--", lw=0.8, label="trivial baseline")
                ax.legend(fontsize=7)
        ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right", fontsize=7)
        ax.set(title=title, ylabel=metric)
    return fig


def standard_figures(
    sweep: Sweep, group_by: list[str], metrics: list[str] | None = None, values: Any = None
) -> dict[str, Any]:
    """The plots whose metrics the sweep has, by file stem (see PLOT_FILES); `values`: the sweep's
    tables.run_values(sweep, group_by, metrics) when the caller has it already."""
    if values is None:
        from lowrank_lab.tracking.tables import run_values

        values = run_values(sweep, group_by, metrics)
    figures = {
        "reported_by_seed": by_seed_figure(values, group_by),
        "val_metric_vs_step": metric_vs_step(sweep, group_by, metrics[0] if metrics else None),
        "spectral_angle_vs_step": metric_vs_step(sweep, group_by, ANGLE),
        "spectral_angle_vs_layer": spectral_angle_vs_layer(sweep, group_by),
        "val_loss_vs_accepted_steps": val_loss_vs_accepted_steps(sweep, group_by),
    }
    return {k: v for k, v in figures.items() if v is not None}

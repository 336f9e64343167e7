"""Spectral metrics of the adapter against the teacher targets, each validation (sad, and kd with a SAD-style
teacher). Per adapted layer, with B (d_out, r), A (r, d_in), s = scaling and the target U (d_out, r_t), σ_T:

    principal angles θᵢ(colspan B, colspan U)   (degrees; mean and max)
    subspace overlap ‖Q_Bᵀ U‖²_F / r           (1: aligned, 0: orthogonal)
    sv_match = ‖σ(Uᵀ·s·BA) − σ_T‖ / ‖σ_T‖        (relative spectrum error: 0 when the adapter's spectrum inside the
                                                target subspace equals the teacher's, 1 at B = 0)

`spectral/<name>` is the mean over layers; the per-layer values go to `<job dir>/plots/spectral_layers.png`
(angles vs layer; teacher vs adapter spectra) and `spectral_history.jsonl`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lowrank_lab.spectral import principal_angles, subspace_overlap

NAMES = ("principal_angle_mean", "principal_angle_max", "subspace_overlap", "sv_match")


@torch.no_grad()
def layer_metrics(
    B: torch.Tensor, A: torch.Tensor, scaling: float, U: torch.Tensor, sigma_target: torch.Tensor
) -> dict[str, Any] | None:
    """The metrics of one layer (None while B = 0: colspan B is undefined) plus both spectra for the plot."""
    with torch.autocast(device_type=B.device.type, enabled=False):
        B, A, U = B.detach().float(), A.detach().float(), U.detach().float().to(B.device)
        if not bool(B.abs().amax() > 0):
            return None
        theta = principal_angles(B, U) * (180.0 / math.pi)
        s = torch.linalg.svdvals(scaling * (U.T @ B) @ A)[: sigma_target.numel()]  # σ(Uᵀ ΔW_adapter)
        target = sigma_target.detach().float().to(B.device)
        error = (s - target).norm() / target.norm().clamp_min(torch.finfo(torch.float32).tiny)
        return {
            "principal_angle_mean": float(theta.mean()),
            "principal_angle_max": float(theta.max()),
            "subspace_overlap": float(subspace_overlap(B, U)),
            "sv_match": float(error),
            "adapter_sv": s.cpu().tolist(),
            "teacher_sv": target.cpu().tolist(),
        }


def short_name(name: str) -> str:
    """`…layer.3.attention.self.query` -> `3.query`."""
    numbers = re.findall(r"\.(\d+)\.", name)
    return f"{numbers[-1]}.{name.split('.')[-1]}" if numbers else name.split(".")[-1]


def plot_layers(per_layer: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Two panels: principal angles (mean, max) vs layer; σ_T vs adapter spectrum per layer (log scale)."""
    from matplotlib.figure import Figure

    names = list(per_layer)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_angle, ax_sv = fig.subplots(1, 2)
    x = range(len(names))
    ax_angle.plot(x, [per_layer[n]["principal_angle_mean"] for n in names], "o-", label="mean θ")
    ax_angle.plot(x, [per_layer[n]["principal_angle_max"] for n in names], "s--", label="max θ")
    ax_angle.set_xticks(list(x), [short_name(n) for n in names], rotation=60, fontsize=7)
    ax_angle.set_ylabel("principal angle to target (°)")
    ax_angle.set_ylim(0, 90)
    ax_angle.legend()
    colors = [f"C{i % 10}" for i in range(len(names))]
    for n, c in zip(names, colors):
        ranks = range(1, len(per_layer[n]["teacher_sv"]) + 1)
        ax_sv.plot(ranks, per_layer[n]["teacher_sv"], "--", color=c, alpha=0.7, label=short_name(n))
        ax_sv.plot(ranks, [max(v, 1e-12) for v in per_layer[n]["adapter_sv"]], "-", color=c, alpha=0.9)
    ax_sv.set_yscale("log")
    ax_sv.legend(fontsize=6, ncol=max(1, len(names) // 12))
    ax_sv.set_xlabel("index i")
    ax_sv.set_ylabel("σᵢ  (dashed: teacher σ_T, solid: adapter)")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


class SpectralMetrics(L.Callback):
    """Logs `spectral/*` (mean over layers) after each validation and saves the per-layer plot + history."""

    def __init__(self, plot_dir: str | None = None, plot: bool = True, pairs: Callable[[], list] | None = None) -> None:
        """`pairs`: the method's `spectral_pairs` (KD passes its own: a wrapper such as SLoRA may be the module the
        Trainer drives); None reads `pl_module.spectral_pairs`."""
        self.plot_dir, self.plot, self.pairs = plot_dir, plot, pairs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pairs = self.pairs or getattr(pl_module, "spectral_pairs", None)
        if trainer.sanity_checking or pairs is None:
            return
        per_layer = {}
        for name, B, A, scaling, target in pairs():
            values = layer_metrics(B, A, scaling, target.u_target, target.sigma_target)
            if values is not None:
                per_layer[name] = values
        if not per_layer:
            return
        means = {f"spectral/{k}": sum(v[k] for v in per_layer.values()) / len(per_layer) for k in NAMES}
        pl_module.log_dict(means, on_epoch=True)
        if self.plot and trainer.is_global_zero:
            out = Path(self.plot_dir or trainer.default_root_dir) / "plots"
            step = int(trainer.global_step)
            plot_layers(per_layer, out / "spectral_layers.png", f"adapter vs teacher target subspace, step {step}")
            record = {"step": step, **means, "layers": {n: {k: v[k] for k in NAMES} for n, v in per_layer.items()}}
            with (out / "spectral_history.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")

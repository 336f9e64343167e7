"""Per-layer teacher targets for SAD-LoRA (the seed's `extract_teacher_svd`):

    W̃_T = ΔW_T Σ^{1/2} = U S Vᵀ,   u_target = U_r (d_out, r),   sigma_weighted = S_r (r,)
    sigma_target = σ(U_rᵀ ΔW_T) (r,): the spectrum of the data-weighted optimum U_r U_rᵀ ΔW_T (what L_coeff matches)

CLI (the teacher is prepared first if missing; targets are cached by teacher + data + rank + n_calib):

    python -m lowrank_lab.spectral.extract model=minilm data=rte peft.lora_r=8 [method.n_calib=2048]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lowrank_lab.spectral.gram import GramAccumulator
from lowrank_lab.spectral.subspace import data_weighted_subspace, data_weighted_subspace_from_gram


def layer_target(delta_w: torch.Tensor, stats: GramAccumulator, rank: int) -> dict[str, torch.Tensor]:
    """ΔW: (d_out, d_in) and its layer's input statistics -> u_target, sigma_weighted, sigma_target (float32).

    Uses the kept rows when there are all of them (implicit SVD of ΔW xᵀ/√n when n < d_in), else the Gram route.
    """
    dw = delta_w.detach().to("cpu", torch.float64)
    r = min(rank, dw.shape[0], dw.shape[1], stats.n)
    sample = stats.sample
    if sample is not None and sample.shape[0] == stats.n:
        U, S = data_weighted_subspace(dw, sample.to("cpu", torch.float64), r)
    else:
        U, S = data_weighted_subspace_from_gram(dw, stats.gram.to("cpu"), stats.n, r)
    sigma = torch.linalg.svdvals(U.T @ dw)  # (r,), descending
    return {"u_target": U.float(), "sigma_weighted": S.float(), "sigma_target": sigma.float()}


def spectral_targets(
    delta: dict[str, torch.Tensor], stats: dict[str, GramAccumulator], rank: int
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> layer_target for every module with a teacher update ΔW_T and calibration statistics."""
    return {name: layer_target(dw, stats[name], rank) for name, dw in delta.items()}


def save_targets(targets: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """One safetensors file, keys `<module>::<field>`; written atomically (parallel jobs never read half a file)."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({f"{n}::{f}": t.contiguous() for n, fields in targets.items() for f, t in fields.items()}, str(tmp))
    tmp.replace(path)


def load_targets(path: Path) -> dict[str, dict[str, torch.Tensor]] | None:
    """What save_targets wrote, or None for an unreadable file (it is then recomputed)."""
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except Exception:
        return None
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        name, field = key.rsplit("::", 1)
        out.setdefault(name, {})[field] = t
    return out


def main(argv: list[str] | None = None) -> int:
    """Compose conf/ with `argv` overrides (method=sad unless given), prepare the teacher, extract and cache."""
    from lowrank_lab.errors import LabError
    from lowrank_lab.teachers import compose_run_parts

    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, datamodule, teacher, init = compose_run_parts(overrides, sad=True)
        rank = int(cfg.peft.lora_r)
        n_calib = int(cfg.method.get("n_calib", 2048))
        targets = teacher.targets(datamodule, rank, n_calib)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"targets: {teacher.last_targets_path or '(not cached: no cache_dir)'}")
    for name, t in targets.items():
        s = t["sigma_weighted"]
        print(f"  {name}: rank {s.numel()}, σ̃₁={float(s[0]):.4g}, σ̃_r={float(s[-1]):.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

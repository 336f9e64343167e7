"""The spectral-target cache of a SAD-style teacher: per adapted layer u_target, sigma_weighted, sigma_target
(the math is lowrank_lab.spectral.extract), computed from the task's training inputs and saved as one safetensors
file per teacher + data + rank + n_calib under `<cache_dir>/targets/`, so parallel jobs compute it once
(lowrank_lab.cache: lock, atomic write, an unreadable file recomputed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank_lab.cache import get_or_build
from lowrank_lab.spectral.calibrate import collect_inputs
from lowrank_lab.spectral.extract import spectral_targets
from lowrank_lab.teachers.settings import digest

Targets = dict[str, dict[str, torch.Tensor]]  # module name -> {u_target, sigma_weighted, sigma_target}


def targets_path(cache_dir: Path, key: str, data_key: Any, names: list[str], rank: int, n_calib: int) -> Path:
    """`<cache_dir>/targets/<teacher key>-r<rank>-n<n_calib>-<hash of data and module names>.safetensors`."""
    tag = digest([data_key, sorted(names)], 10)
    return cache_dir / "targets" / f"{key}-r{rank}-n{n_calib}-{tag}.safetensors"


def save_targets(targets: Targets, path: Path) -> None:
    """One safetensors file, keys `<module>::<field>` (cached_targets writes it to a temp file, then renames it)."""
    from safetensors.torch import save_file

    save_file({f"{n}::{f}": t.contiguous() for n, fields in targets.items() for f, t in fields.items()}, str(path))


def load_targets(path: Path) -> Targets:
    """What save_targets wrote; raises for an unreadable file."""
    from safetensors.torch import load_file

    out: Targets = {}
    for key, t in load_file(str(path)).items():
        name, field = key.rsplit("::", 1)
        out.setdefault(name, {})[field] = t
    return out


def extract_targets(
    model: nn.Module, delta: dict[str, torch.Tensor], datamodule: Any, rank: int, n_calib: int
) -> Targets:
    """Calibrate on `n_calib` training tokens (inputs of every module with a ΔW_T), then the SAD targets."""
    from lightning.pytorch.utilities.seed import isolate_rng

    modules = {name: model.get_submodule(name) for name in delta}
    device = next(model.parameters()).device
    widest = max(dw.shape[1] for dw in delta.values())
    with isolate_rng():  # the DataLoader iterator draws a seed: same run stream with or without the cache
        stats = collect_inputs(
            modules,
            lambda b: model(**{k: v.to(device) for k, v in b.items() if k != "labels"}),
            datamodule.train_dataloader(),
            n_calib,
            keep_rows=n_calib <= 4 * widest,  # rows are few: exact implicit / QR route; else the Gram
        )
    return spectral_targets(delta, stats, rank)


def cached_targets(path: Path | None, compute: Callable[[], Targets]) -> Targets:
    """The targets at `path`, computed (under a cross-process lock) and saved when missing or unreadable."""
    if path is None:
        return compute()
    return get_or_build(path, compute, load_targets, save_targets, what="spectral targets")

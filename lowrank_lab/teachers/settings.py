"""`method.teacher` as a dataclass, and the keys that name a prepared teacher and its caches (what the cache
directory names are made of: hashes of tensors, of the data config, of the recipe)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lowrank_lab.errors import bad_value
from lowrank_lab.methods.keys import method_key

SAD_MISMATCH = "SAD needs a teacher fine-tuned from the student's base; use method=kd for a different teacher"
INFO_FILE = "teacher.json"


@dataclass
class TeacherSettings:
    """`method.teacher`: where the teacher comes from and the recipe that prepares it (full fine-tuning)."""

    name_or_path: str | None = None
    cache_dir: str | None = None
    seed: int = 0
    lr: float = 1.0e-4
    epochs: int = 5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_steps: int = -1
    require_better_than_majority: bool = True
    weight_delta: bool = False  # the method needs ΔW = W_T − W_base (SAD): a teacher fine-tuned from the student's base

    def recipe(self) -> dict[str, Any]:
        """The fields that change the prepared weights (part of the cache key)."""
        skip = {"name_or_path", "cache_dir", "require_better_than_majority", "weight_delta"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def settings_from(cfg: DictConfig) -> TeacherSettings:
    """`cfg.method.teacher` (a wrapper's: `method.inner.teacher`) checked key by key; the cache defaults to
    `<paths.output_dir>/teachers`."""
    key = f"{method_key(cfg)}.teacher"
    spec = OmegaConf.select(cfg, key)
    values = OmegaConf.to_container(spec, resolve=True) if spec is not None else {}
    known = {f.name for f in fields(TeacherSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise bad_value(f"{key}.{unknown[0]}", values[unknown[0]], f"one of {sorted(known)}")
    settings = TeacherSettings(**values)
    settings.cache_dir = settings.cache_dir or str(Path(cfg.paths.output_dir) / "teachers")
    return settings


def data_key(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the training data (not its batching or location on disk)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    skip = {"_target_", "batch_size", "eval_batch_size", "num_workers", "data_dir"}
    return {k: v for k, v in data.items() if k not in skip}


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of names, shapes, dtypes and bytes of `tensors` (order independent)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest(obj: Any, n: int = 12) -> str:
    """A short stable hash of a JSON-able `obj` (cache keys)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]

"""The data pass of data-aware inits (CorDA, EVA): the first training batches, and a cache key built from what
the result depends on (the model's weights, those batches, the rank and the init's settings)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def _batches(datamodule: Any, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches on the model's device without sequence-level labels (the pass reads layer inputs only;
    token-level labels stay, for EVA's label mask)."""
    device = next(model.parameters()).device
    for batch in datamodule.train_dataloader():
        ids = batch["input_ids"]
        yield {k: v.to(device) for k, v in batch.items() if k != "labels" or v.shape == ids.shape}


def calibration_batches(datamodule: Any, num_batches: int, model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The first `num_batches` batches of `datamodule.train_dataloader()`: (B, T) tensors."""
    return list(itertools.islice(_batches(datamodule, model), num_batches))


def calibration_samples(datamodule: Any, num_samples: int, model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The first `num_samples` training examples, each a batch of one with its padding removed: (1, T_i)."""
    samples: list[dict[str, torch.Tensor]] = []
    for batch in _batches(datamodule, model):
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        for i in range(mask.shape[0]):
            length = int(mask[i].sum())
            samples.append({k: v[i : i + 1, :length] for k, v in batch.items() if v.dim() == 2})
            if len(samples) >= num_samples:
                return samples
    return samples


def target_modules_key(config: Any) -> str | list[str]:
    """`config.target_modules` in a stable form for a cache key (a regex string stays as it is)."""
    targets = config.target_modules
    return targets if isinstance(targets, str) else sorted(targets)


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every base parameter's name, shape, sum and a strided sample of its values (cheap at any size);
    adapter factors (`lora_*`) are left out: a data pass reads the base with adapters disabled."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)].float().cpu()
        h.update(f"{name}{tuple(p.shape)}{float(flat.double().sum()):.10e}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def cache_file(cache_dir: str | Path, kind: str, model: nn.Module, inputs: list[dict], settings: dict) -> Path:
    """`<cache_dir>/<kind>-<hash>.<ext>`: one file per (model weights, calibration inputs, rank + settings)."""
    h = hashlib.sha1(model_fingerprint(model).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for item in inputs:
        for key in sorted(item):
            h.update(key.encode())
            h.update(item[key].cpu().numpy().tobytes())
    ext = "safetensors" if kind == "eva" else "pt"
    return Path(cache_dir).expanduser() / f"{kind}-{h.hexdigest()[:16]}.{ext}"

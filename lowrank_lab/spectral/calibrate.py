"""Calibration for the data-weighted subspace: the inputs x of named modules, caught with forward hooks over a
fixed number of real (non-padding) tokens and streamed into one GramAccumulator per module.

    Σ = xᵀx / n,   x: (n, d_in) the module's inputs over the n calibration tokens   (SAD-LoRA, "Σ_x")

Every module sees the same n tokens: the first n non-padding positions of the batches, in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lowrank_lab.spectral.gram import GramAccumulator


def _rows(x: torch.Tensor, mask: torch.Tensor | None, take: int) -> torch.Tensor:
    """x: (B, T, d) with mask (B, T) -> the first `take` kept rows (take, d); other shapes are flattened."""
    if mask is not None and x.shape[:-1] == mask.shape:
        return x[mask][:take]
    return x.reshape(-1, x.shape[-1])[:take]


@torch.no_grad()
def collect_inputs(
    modules: dict[str, nn.Module],
    run: Callable[[dict[str, torch.Tensor]], Any],
    batches: Iterable[dict[str, torch.Tensor]],
    n_tokens: int,
    keep_rows: bool = False,
    seed: int = 0,
) -> dict[str, GramAccumulator]:
    """Run `run(batch)` over `batches` until `n_tokens` tokens were seen; return name -> GramAccumulator of the
    inputs of `modules[name]`. keep_rows: also keep the rows themselves (acc.sample, (n, d_in))."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens={n_tokens} must be a positive number of calibration tokens.")
    stats: dict[str, GramAccumulator] = {}
    state: dict[str, Any] = {"mask": None, "take": 0}

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0].detach()
            if name not in stats:
                stats[name] = GramAccumulator(x.shape[-1], max_rows=n_tokens if keep_rows else None, seed=seed)
            stats[name].update(_rows(x, state["mask"], state["take"]))

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    seen = 0
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            state["mask"] = mask.bool() if mask is not None else None
            available = int(state["mask"].sum()) if mask is not None else int(batch["input_ids"].numel())
            state["take"] = min(available, n_tokens - seen)
            run(batch)
            seen += state["take"]
            if seen >= n_tokens:
                break
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0 or len(stats) != len(modules):
        missing = sorted(set(modules) - set(stats))
        raise ValueError(f"calibration saw {seen} tokens; modules never called: {missing[:3]}")
    return stats

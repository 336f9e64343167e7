"""The gate decision of `method=slora`: SLoRA's novelty gate, a loss floor, or both, identical on every rank.

SLoRA (seed: shared/seeds/slora.txt), per batch and before any backward:
    e_t = softmax(p_t) − onehot(y_t) on the top-K logits + gold,   z = Σ_t TS(h_t ⊗ e_t),   ẑ = z / ‖z‖
    nov = 1 − ‖Wᵀ ẑ‖²,   accept ~ Bernoulli(σ(β (nov − τ))),   τ ← τ + η (a − ρ),   accepted ẑ → W (FD)
(the sketch of the head gradient ∇_W L = Σ_t h_t ⊗ e_t; see `lowrank_lab.gating.HeadGradientGate`).

Modes (`method.gate.mode`, the seed's four ablations), all with the first `burn_in` batches accepted:
    none        every batch accepted, through the same code path (sketch, novelty, basis and logs included).
    novelty     SLoRA: the Bernoulli draw above, its rate driven to ρ = target_novelty.
    loss_floor  selective-backprop style, deterministic: accept iff ℓ > Q_q(ℓ over the last `loss_window`
                batches), q = 1 − ρ (the current batch is compared with the history before it joins it).
    combined    novelty OR loss_floor, each filter at rate r = 1 − √(1 − ρ), so that the union accepts
                ≈ ρ when the two are independent. Union, not intersection: ẑ is normalised, so novelty sees
                only the direction of the head gradient; the floor adds back batches in a known direction
                whose error is still large.
Distributed: the unnormalised sketch and the loss are all-reduced (one collective of m + 2 floats) before
any decision, so every rank sees the global batch's ẑ and mean loss, the same τ and generator state, and
takes the same decision (no rank can skip a backward that another runs, which would hang DDP).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.gating import HeadGradientGate

MODES = ("none", "novelty", "loss_floor", "combined")
GATE_ARGS = ("m", "k", "target_novelty", "target_novelty_scaler", "novelty_ema_rate", "reorth_every", "k_topk")


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over ranks when torch.distributed is initialised (a copy); x itself otherwise."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class LossFloor:
    """Accept a batch iff its loss is above the q-quantile of the previous `window` batch losses."""

    def __init__(self, quantile: float, window: int) -> None:
        self.quantile, self.window = float(quantile), int(window)
        self.history: list[float] = []

    def accept(self, loss: float, burn_in: bool) -> bool:
        """Decide for `loss`, then add it to the history (an empty history accepts)."""
        floor = torch.tensor(self.history, dtype=torch.float64).quantile(self.quantile) if self.history else None
        decision = burn_in or floor is None or loss > float(floor)
        self.history = (self.history + [float(loss)])[-self.window :]
        return decision


class SLoRAGate:
    """Mode logic, counters and checkpoint state around a HeadGradientGate and a LossFloor."""

    def __init__(self, d_hidden: int, vocab_size: int, mode: str = "novelty", loss_window: int = 50, **gate: Any):
        if mode not in MODES:
            raise bad_value("method.gate.mode", mode, f"one of {list(MODES)}")
        if int(loss_window) < 1:
            raise bad_value("method.gate.loss_window", loss_window, "a positive integer")
        rho = float(gate.get("target_novelty", 0.30))
        if not 0.0 < rho < 1.0:
            raise bad_value("method.gate.target_novelty", rho, "the target acceptance rate, in (0, 1)")
        self.mode, self.target_rate = mode, rho
        self.filter_rate = 1.0 - math.sqrt(1.0 - rho) if mode == "combined" else rho  # r per filter
        self.burn_in_spec = gate.get("burn_in", 2000)
        kwargs = {k: gate[k] for k in GATE_ARGS if k in gate} | {"target_novelty": self.filter_rate}
        known = {*GATE_ARGS, "burn_in", "seed"}
        if set(gate) - known:
            allowed = sorted(known | {"mode", "loss_window"})
            raise bad_value("method.gate", sorted(set(gate) - known), f"unknown keys; allowed: {allowed}")
        try:
            self.gate = HeadGradientGate(d_hidden, vocab_size, burn_in=0, seed=int(gate.get("seed", 0)), **kwargs)
        except ValueError as err:
            raise LabError(f"method.gate: {err}") from None
        self.set_run_length(None)
        self.floor = LossFloor(1.0 - self.filter_rate, loss_window)
        self.accepted_steps = self.total_steps = 0

    # ---- configuration that depends on the run

    def set_run_length(self, total_batches: int | None) -> None:
        """Resolve `burn_in`: an int is a batch count, a float in (0, 1) a fraction of `total_batches`."""
        spec = self.burn_in_spec
        if isinstance(spec, float) and 0.0 < spec < 1.0:
            self.gate.burn_in = int(round(spec * total_batches)) if total_batches else 0
        elif isinstance(spec, (int, float)) and spec >= 0 and float(spec).is_integer():
            self.gate.burn_in = int(spec)
        else:
            raise bad_value("method.gate.burn_in", spec, "a batch count >= 0 or a fraction of the run in (0, 1)")

    def to(self, device: torch.device | str) -> SLoRAGate:
        """Move the sketch tables and basis to `device` (the decision generator stays on the CPU)."""
        g = self.gate
        g.device = torch.device(device)
        g.tensor_sketch.to(device)
        g.fd.to(device)  # the FD buffer and W, its row space
        return self

    # ---- one batch

    def embed(self, h: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
        """Unnormalised z (m,) from h (B,[T,]H), logits (B,[T,]V), labels (B,[T]); regression: e = ŷ − y."""
        if logits.shape[-1] == 1 and labels.is_floating_point():  # one output scored by MSE: ∇_W = Σ h (ŷ − y)
            keep = ~torch.isnan(labels)
            e = (logits.squeeze(-1) - labels.to(logits.dtype))[keep].float().to(self.gate.device)  # (n,)
            hk = h[keep].float().to(self.gate.device)  # (n, H)
            idx = torch.zeros_like(e, dtype=torch.long)[:, None]
            return self.gate.tensor_sketch.sketch_sparse(hk, e[:, None], idx, reduce=True)
        return self.gate.embed(h, logits, labels, normalize=False, shift_labels=causal)

    @torch.no_grad()
    def decide(
        self,
        h: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        loss: torch.Tensor | float,
        causal: bool = False,
        sync_fn: Callable[[torch.Tensor], torch.Tensor] | None = all_reduce_sum,
    ) -> tuple[bool, float]:
        """Sketch → sync over ranks → novelty → mode decision → basis update on accept; (accept, novelty)."""
        g = self.gate
        z = self.embed(h, logits, labels, causal)  # (m,)
        loss = torch.as_tensor(loss, dtype=z.dtype, device=z.device).detach().reshape(1)
        packed = torch.cat([z, loss, torch.ones_like(loss)])  # [z, ℓ, 1]: one collective per batch
        if sync_fn is not None:
            packed = sync_fn(packed)
        z, mean_loss = packed[: g.m], float(packed[g.m] / packed[g.m + 1])
        nov = g.novelty(z)
        burn_in = g.total_steps < g.burn_in
        novel = g.accept(nov) if self.mode in ("novelty", "combined") else False
        above = self.floor.accept(mean_loss, burn_in) if self.mode in ("loss_floor", "combined") else False
        decision = self.mode == "none" or novel or above
        if decision:
            g.update(z)
        g.step()
        self.total_steps += 1
        self.accepted_steps += int(decision)
        return decision, nov

    def acceptance_rate(self) -> float:
        """accepted_steps / total_steps over the final decisions (0 before the first batch)."""
        return self.accepted_steps / self.total_steps if self.total_steps else 0.0

    # ---- pickling (ddp_spawn): a torch.Generator pickles through a temporary tensor, which torch.multiprocessing
    # shares by a file descriptor that is gone by the time the child reads it; send the state as bytes instead.

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["gate"] = gate = copy.copy(self.gate)
        gate.generator = self.gate.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        rng = torch.frombuffer(bytearray(self.gate.generator), dtype=torch.uint8)
        self.gate.generator = torch.Generator().set_state(rng)

    # ---- checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Gate (basis, FD, τ, EMAs, generator), loss history and counters; loadable with weights_only=True."""
        return {
            "mode": self.mode,
            "burn_in": self.gate.burn_in,
            "gate": self.gate.state_dict(),
            "loss_history": list(self.floor.history),
            "accepted_steps": self.accepted_steps,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()` of a gate built with the same mode, m, k and seed."""
        if state["mode"] != self.mode:
            raise bad_value("method.gate.mode", self.mode, f"the checkpoint's gate mode, {state['mode']!r}")
        self.gate.load_state_dict(state["gate"])
        self.gate.burn_in = int(state["burn_in"])
        self.floor.history = [float(x) for x in state["loss_history"]]
        self.accepted_steps, self.total_steps = int(state["accepted_steps"]), int(state["total_steps"])

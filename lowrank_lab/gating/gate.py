"""HeadGradientGate (SLoRA): accept a batch for backward only when its head gradient is novel.

Per kept token t (label ≠ −100):  e_t = softmax(p_t) − onehot(y_t), restricted to the top-K logits + gold;
    z = Σ_t TS(h_t ⊗ e_t),  ẑ = z / ‖z‖          (a sketch of the head gradient ∇_W L = Σ_t h_t ⊗ e_t)
    nov = 1 − ‖Wᵀ ẑ‖²  ∈ [0, 1]                 (W: m × ≤k orthonormal basis of accepted sketches, via FD)
    P(accept) = σ(β (nov − τ)),  β = target_novelty_scaler;  the first `burn_in` steps always accept.
Basis: on accept, W ← FD(W, ẑ) at once (the seed's step 7): a Frequent-Directions sketch with ℓ = ⌊k/2⌋ and a
k-row buffer holds the shrunk principal directions of all accepted sketches plus every sketch accepted since its
last shrink, and W is an orthonormal basis of its rows, extended by one Gram–Schmidt step per accept (O(m·k);
an SVD of k × m every k − ℓ accepts). So right after update(z), novelty(z) ≈ 0, and W has rank ≤ k.
`reorth_every` only re-orthonormalises W (QR) against floating-point drift.
Threshold rule (ours; the seed only says "τ adapts via EMA"): after each post-burn-in draw
    τ ← τ + η (a − ρ),   a ∈ {0, 1} the decision, ρ = target_novelty (target rate), η = novelty_ema_rate.
Summed over T steps this gives  (#accepted)/T = ρ + (τ_T − τ_0)/(η T),  and τ stays in a bounded range
(novelty lives in [0, 1]), so the realised acceptance rate converges to the target at rate O(1/(ηT)).
τ starts at EMA(nov) − logit(ρ)/β, the threshold at which the average batch is accepted with probability ρ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .frequent_directions import FrequentDirections
from .sketch import TensorSketch

__all__ = ["HeadGradientGate"]


class HeadGradientGate:
    """Pre-backward novelty gate over TensorSketches of the LM/classifier head gradient (SLoRA)."""

    def __init__(
        self,
        d_hidden: int,
        vocab_size: int,
        m: int = 512,
        k: int = 64,
        target_novelty: float = 0.30,
        target_novelty_scaler: float = 10.0,
        novelty_ema_rate: float = 0.01,
        burn_in: int = 2000,
        reorth_every: int = 128,
        k_topk: int = 64,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 < target_novelty < 1.0:
            raise ValueError(f"target_novelty (the target acceptance rate) must be in (0, 1), got {target_novelty}.")
        if not 2 <= k <= m:
            raise ValueError(f"k (basis rank) must be in [2, m={m}], got {k}.")
        for name, value in (
            ("target_novelty_scaler", target_novelty_scaler),
            ("novelty_ema_rate", novelty_ema_rate),
            ("reorth_every", reorth_every),
            ("k_topk", k_topk),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}.")
        self.d_hidden, self.vocab_size, self.m, self.k = int(d_hidden), int(vocab_size), int(m), int(k)
        self.target_novelty, self.beta = float(target_novelty), float(target_novelty_scaler)
        self.eta, self.burn_in = float(novelty_ema_rate), int(burn_in)
        self.reorth_every, self.k_topk, self.seed = int(reorth_every), int(k_topk), int(seed)
        self.device = torch.device(device)
        self.tensor_sketch = TensorSketch(self.d_hidden, self.vocab_size, self.m, seed=self.seed).to(self.device)
        self.fd = FrequentDirections(self.m, self.k // 2, device=self.device, rows=self.k)  # W = its row space
        # Decisions draw from their own CPU generator: identical on every rank and device, and checkpointable.
        self.generator = torch.Generator().manual_seed(self.seed + 1)
        self.tau = 0.0
        self.tau_ready = False
        self.novelty_ema: float | None = None  # EMA of observed novelty, used to start τ after burn-in
        self.rate_ema = self.target_novelty  # EMA of decisions (for logging)
        self.accepted_steps = 0
        self.total_steps = 0
        self.num_updates = 0

    # ---- sketching

    @torch.no_grad()
    def embed(
        self,
        h: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        normalize: bool = True,
        shift_labels: bool = False,
    ) -> torch.Tensor:
        """Sketch the head gradient: h (B,[T,]H), logits (B,[T,]V), labels (B,[T]) -> z (m,), unit norm.

        Labels must be aligned with logits (−100 = ignored); `shift_labels=True` does the causal-LM shift
        (logits[:, :-1] predict labels[:, 1:]). A batch with no kept token gives z = 0.
        """
        if shift_labels:
            h, logits, labels = h[:, :-1], logits[:, :-1], labels[:, 1:]
        if h.shape[:-1] != labels.shape or logits.shape[:-1] != labels.shape:
            raise ValueError(
                f"embed expects h (B,[T,]H), logits (B,[T,]V), labels (B,[T]) with equal leading dims, got "
                f"{tuple(h.shape)}, {tuple(logits.shape)}, {tuple(labels.shape)}."
            )
        labels = labels.detach().reshape(-1).to(self.device)
        keep = labels != -100  # (N,)
        y = labels[keep]  # (n,)
        h = h.detach().reshape(-1, h.shape[-1]).to(self.device)[keep].float()  # (N, H) -> (n, H)
        p = logits.detach().reshape(-1, logits.shape[-1]).to(self.device)[keep].float()  # (n, V)
        if y.numel() == 0:
            return torch.zeros(self.m, device=self.device)
        # e = softmax(p) − onehot(y) on the top-K logits plus the gold index, with O(n·K) stored entries.
        top_k = min(self.k_topk, p.shape[-1])
        lse = torch.logsumexp(p, dim=-1, keepdim=True)  # (n, 1)
        top_logit, top_idx = torch.topk(p, top_k, dim=-1)  # (n, K)
        top_prob = torch.exp(top_logit - lse)  # (n, K)
        gold_prob = torch.exp(p.gather(-1, y[:, None]) - lse)  # (n, 1)
        gold_in_top = (top_idx == y[:, None]).any(dim=-1, keepdim=True)  # (n, 1)
        # Gold column holds −1, plus p_y when the top-K columns do not already hold it (no double count).
        gold_val = gold_prob * (~gold_in_top) - 1.0  # (n, 1)
        values = torch.cat([top_prob, gold_val], dim=-1)  # (n, K+1)
        indices = torch.cat([top_idx, y[:, None]], dim=-1)  # (n, K+1)
        z = self.tensor_sketch.sketch_sparse(h, values, indices, reduce=True)  # Σ_t TS(h_t ⊗ e_t): (m,)
        return self._unit(z) if normalize else z

    @staticmethod
    def _unit(z: torch.Tensor) -> torch.Tensor:
        """z / ‖z‖ for z (m,); the zero vector stays zero."""
        norm = torch.linalg.vector_norm(z)
        return z / norm if norm > 0 else z

    # ---- decision

    @torch.no_grad()
    def novelty(self, z: torch.Tensor) -> float:
        """nov = 1 − ‖Wᵀ ẑ‖² in [0, 1] for z (m,); 1 with no basis yet, 0 for z = 0 (nothing to learn)."""
        z = self._unit(z.detach().to(self.device).float().reshape(-1))
        if not bool(z.any()):
            return 0.0
        if self.basis.shape[1] == 0:
            return 1.0
        with torch.autocast(self.device.type, enabled=False):  # spectral ops stay in float32
            proj = self.basis.T @ z  # (k,)
            energy = float(proj @ proj)  # ‖Wᵀ ẑ‖²
        return min(max(1.0 - energy, 0.0), 1.0)

    def accept(self, novelty: float) -> bool:
        """Always True during burn-in; then Bernoulli(σ(β(nov − τ))) and τ ← τ + η(a − ρ)."""
        novelty = float(novelty)
        if self.novelty_ema is None:
            self.novelty_ema = novelty
        else:
            self.novelty_ema += self.eta * (novelty - self.novelty_ema)
        if self.total_steps < self.burn_in:
            decision = True
        else:
            rho = self.target_novelty
            if not self.tau_ready:  # start where a batch of average novelty is accepted with probability ρ
                self.tau = self.novelty_ema - math.log(rho / (1.0 - rho)) / self.beta
                self.tau_ready = True
            x = self.beta * (novelty - self.tau)
            prob = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))  # σ(x), stable
            decision = bool(torch.rand((), generator=self.generator).item() < prob)
            self.tau += self.eta * (float(decision) - rho)
        self.rate_ema += self.eta * (float(decision) - self.rate_ema)
        self.accepted_steps += int(decision)
        return decision

    @property
    def basis(self) -> torch.Tensor:
        """W: (m, ≤k) orthonormal, the row space of the FD buffer (current after every update)."""
        return self.fd.span

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        """W ← FD(W, ẑ) for an accepted sketch ẑ (m,): afterwards novelty(ẑ) ≈ 0; re-orthonormalise W (QR) every
        `reorth_every` updates."""
        z = self._unit(z.detach().to(self.device).float().reshape(-1))
        if not bool(z.any()):
            return
        self.fd.update(z[None])
        self.num_updates += 1
        if self.num_updates % self.reorth_every == 0:
            self.fd.reorthonormalize()

    def step(self) -> None:
        """Advance the step counter (call once per batch, accepted or not)."""
        self.total_steps += 1

    def acceptance_rate(self) -> float:
        """accepted_steps / total_steps (0 before the first step)."""
        return self.accepted_steps / self.total_steps if self.total_steps else 0.0

    def decide(
        self,
        h: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        sync_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shift_labels: bool = False,
    ) -> tuple[bool, float]:
        """embed → novelty → accept → update (if accepted) → step; returns (accept, novelty).

        Distributed: pass sync_fn (e.g. all-reduce sum or mean of an (m,) tensor). The unnormalised
        per-rank sketches are reduced before normalising, which is exactly the sketch of the global batch's
        head gradient (TensorSketch is linear), so every rank sees the same ẑ, basis and generator state and
        therefore makes the same Bernoulli draw: no broadcast of the decision is needed.
        """
        z = self.embed(h, logits, labels, normalize=False, shift_labels=shift_labels)
        if sync_fn is not None:
            z = sync_fn(z)
        z = self._unit(z)
        nov = self.novelty(z)
        decision = self.accept(nov)
        if decision:
            self.update(z)
        self.step()
        return decision, nov

    # ---- checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Everything that affects future decisions: FD buffer and W, τ, EMAs, counters, generator state."""
        return {
            "fd": self.fd.state_dict(),
            "tau": self.tau,
            "tau_ready": self.tau_ready,
            "novelty_ema": self.novelty_ema,
            "rate_ema": self.rate_ema,
            "accepted_steps": self.accepted_steps,
            "total_steps": self.total_steps,
            "num_updates": self.num_updates,
            "generator": self.generator.get_state(),
            "seed": self.seed,
            "m": self.m,
            "k": self.k,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; the gate must have been built with the same m, k and seed."""
        for key in ("m", "k", "seed"):
            if int(state[key]) != getattr(self, key):
                mine = getattr(self, key)
                raise ValueError(f"gate state has {key}={state[key]}, this gate has {key}={mine}.")
        self.fd.load_state_dict(state["fd"])
        self.tau, self.tau_ready = float(state["tau"]), bool(state["tau_ready"])
        ema = state["novelty_ema"]
        self.novelty_ema = None if ema is None else float(ema)
        self.rate_ema = float(state["rate_ema"])
        self.accepted_steps, self.total_steps = int(state["accepted_steps"]), int(state["total_steps"])
        self.num_updates = int(state["num_updates"])
        self.generator.set_state(state["generator"].clone())

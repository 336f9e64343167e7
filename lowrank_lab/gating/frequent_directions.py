"""Frequent Directions (Liberty 2013; Ghashami et al. 2016): a streaming low-rank sketch of a row stream.

Rows of A are appended to a 2ℓ-row buffer B; when it is full,
    B = U diag(σ) Vᵀ,   δ = σ_{ℓ+1}²,   B ← diag(√max(σ² − δ, 0)) Vᵀ   (keeps at most ℓ non-zero rows).
Each shrink adds at most δ to ‖AᵀA − BᵀB‖₂ and removes at least (ℓ+1)·δ from ‖B‖²_F, hence
    0 ⪯ AᵀA − BᵀB   and   ‖AᵀA − BᵀB‖₂ ≤ ‖A‖²_F / (ℓ+1) ≤ 2‖A‖²_F / ℓ   (the design's bound).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FrequentDirections"]


class FrequentDirections:
    """Streaming sketch of rows in R^dim with a (2ℓ, dim) buffer; `sketch` has at most ℓ rows."""

    def __init__(
        self,
        dim: int,
        ell: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if dim < 1:
            raise ValueError(f"FrequentDirections dim must be a positive integer, got {dim}.")
        if ell < 1:
            raise ValueError(f"FrequentDirections ell must be a positive integer, got {ell}.")
        self.dim, self.ell = int(dim), int(ell)
        self.buffer = torch.zeros(2 * self.ell, self.dim, dtype=dtype, device=device)  # B: (2ℓ, dim)
        self.next_row = 0  # rows [0, next_row) of the buffer are in use

    def to(self, device: torch.device | str) -> FrequentDirections:
        """Move the buffer to `device` (in place); returns self."""
        self.buffer = self.buffer.to(device)
        return self

    def update(self, rows: torch.Tensor) -> None:
        """Append rows (n, dim) (or one row (dim,)) to the stream, shrinking whenever the buffer fills."""
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        if rows.dim() != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"FrequentDirections.update expects rows (n, {self.dim}), got {tuple(rows.shape)}.")
        rows = rows.detach().to(device=self.buffer.device, dtype=self.buffer.dtype)
        start = 0
        while start < rows.shape[0]:
            take = min(rows.shape[0] - start, self.buffer.shape[0] - self.next_row)
            self.buffer[self.next_row : self.next_row + take] = rows[start : start + take]
            self.next_row += take
            start += take
            if self.next_row == self.buffer.shape[0]:
                self.buffer, self.next_row = self._shrink(self.buffer)

    def _shrink(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Shrink rows (r, dim) to at most ℓ non-zero rows; returns the (2ℓ, dim) buffer and its fill."""
        _, sigma, vh = torch.linalg.svd(rows, full_matrices=False)  # σ: (p,), Vᵀ: (p, dim), p = min(r, dim)
        delta = sigma[self.ell] ** 2 if sigma.shape[0] > self.ell else sigma.new_zeros(())
        shrunk = torch.sqrt(torch.clamp(sigma[: self.ell] ** 2 - delta, min=0.0))  # (≤ℓ,)
        keep = int(shrunk.shape[0])
        out = torch.zeros_like(self.buffer)
        out[:keep] = shrunk.unsqueeze(1) * vh[:keep]  # diag(√(σ² − δ)) Vᵀ
        return out, keep

    @property
    def sketch(self) -> torch.Tensor:
        """The current sketch B with at most ℓ rows, (≤ℓ, dim); shrinks a copy when more rows are held."""
        if self.next_row <= self.ell:
            return self.buffer[: self.next_row].clone()
        out, keep = self._shrink(self.buffer[: self.next_row])
        return out[:keep]

    def basis(self, k: int, rtol: float = 1e-6) -> torch.Tensor:
        """Orthonormal top-k right singular vectors of the buffer: (dim, k'), k' = min(k, numerical rank)."""
        rows = self.buffer[: self.next_row]
        if rows.shape[0] == 0:
            return self.buffer.new_zeros(self.dim, 0)
        _, sigma, vh = torch.linalg.svd(rows, full_matrices=False)
        # Directions with (numerically) zero energy carry no information: drop them rather than pad.
        rank = int((sigma > rtol * sigma[0].clamp_min(torch.finfo(sigma.dtype).tiny)).sum())
        return vh[: min(k, rank)].T.contiguous()

    def state_dict(self) -> dict[str, Any]:
        """Buffer and fill counter (plain tensors and ints; loadable with weights_only=True)."""
        return {"dim": self.dim, "ell": self.ell, "buffer": self.buffer.clone(), "next_row": self.next_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; dim and ell must match."""
        if int(state["dim"]) != self.dim or int(state["ell"]) != self.ell:
            raise ValueError(
                f"FrequentDirections state has dim={state['dim']}, ell={state['ell']}; "
                f"this sketch has dim={self.dim}, ell={self.ell}."
            )
        self.buffer = state["buffer"].to(device=self.buffer.device, dtype=self.buffer.dtype).clone()
        self.next_row = int(state["next_row"])

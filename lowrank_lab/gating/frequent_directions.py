"""Frequent Directions (Liberty 2013; Ghashami et al. 2016): a streaming low-rank sketch of a row stream.

Rows of A are appended to a buffer B of `rows` > ℓ rows (2ℓ by default); when a row arrives and B is full,
    B = U diag(σ) Vᵀ,   δ = σ_{ℓ+1}²,   B ← diag(√max(σ² − δ, 0)) Vᵀ   (keeps at most ℓ non-zero rows)
first, then the row goes in: the newest row is always in B as it arrived. Each shrink adds at most δ to
‖AᵀA − BᵀB‖₂ and removes at least (ℓ+1)·δ from ‖B‖²_F, hence
    0 ⪯ AᵀA − BᵀB   and   ‖AᵀA − BᵀB‖₂ ≤ ‖A‖²_F / (ℓ+1) ≤ 2‖A‖²_F / ℓ   (the design's bound).
`span` is an orthonormal basis of B's row space, kept current per row in O(dim · rows): one Gram–Schmidt step
(done twice) per appended row, Vᵀ of the SVD at a shrink; `reorthonormalize()` (QR) removes drift.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FrequentDirections"]


class FrequentDirections:
    """Streaming sketch of rows in R^dim with a (rows, dim) buffer (rows = 2ℓ unless given); `sketch` has at most
    ℓ rows; `span` (dim, ≤ rows) is an orthonormal basis of the buffer's rows."""

    def __init__(
        self,
        dim: int,
        ell: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        rows: int | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError(f"FrequentDirections dim must be a positive integer, got {dim}.")
        if ell < 1:
            raise ValueError(f"FrequentDirections ell must be a positive integer, got {ell}.")
        rows = 2 * int(ell) if rows is None else int(rows)
        if rows <= ell:
            raise ValueError(f"FrequentDirections rows (the buffer) must exceed ell={ell}, got {rows}.")
        self.dim, self.ell = int(dim), int(ell)
        self.buffer = torch.zeros(rows, self.dim, dtype=dtype, device=device)  # B: (rows, dim)
        self.next_row = 0  # rows [0, next_row) of the buffer are in use
        self.span = self.buffer.new_zeros(self.dim, 0)  # orthonormal basis of the buffer's row space

    def to(self, device: torch.device | str) -> FrequentDirections:
        """Move the buffer and its span to `device` (in place); returns self."""
        self.buffer, self.span = self.buffer.to(device), self.span.to(device)
        return self

    def update(self, rows: torch.Tensor) -> None:
        """Append rows (n, dim) (or one row (dim,)) to the stream, shrinking whenever the buffer fills."""
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        if rows.dim() != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"FrequentDirections.update expects rows (n, {self.dim}), got {tuple(rows.shape)}.")
        rows = rows.detach().to(device=self.buffer.device, dtype=self.buffer.dtype)
        for row in rows:
            if self.next_row == self.buffer.shape[0]:  # full: make room first, so the new row stays as it is
                self.buffer, self.next_row, self.span = self._shrink(self.buffer)
            self.buffer[self.next_row] = row
            self.next_row += 1
            self.span = _extend(self.span, row)

    def _shrink(self, rows: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Shrink rows (r, dim) to at most ℓ non-zero rows; returns the buffer, its fill and its row-space basis."""
        _, sigma, vh = torch.linalg.svd(rows, full_matrices=False)  # σ: (p,), Vᵀ: (p, dim), p = min(r, dim)
        delta = sigma[self.ell] ** 2 if sigma.shape[0] > self.ell else sigma.new_zeros(())
        shrunk = torch.sqrt(torch.clamp(sigma[: self.ell] ** 2 - delta, min=0.0))  # (≤ℓ,)
        keep = int(shrunk.shape[0])
        out = torch.zeros_like(self.buffer)
        out[:keep] = shrunk.unsqueeze(1) * vh[:keep]  # diag(√(σ² − δ)) Vᵀ
        alive = int((shrunk > _tol(shrunk) * shrunk[:1].clamp_min(torch.finfo(shrunk.dtype).tiny)).sum()) if keep else 0
        return out, keep, vh[:alive].T.contiguous()  # the rows are orthogonal: their directions are Vᵀ's

    def reorthonormalize(self) -> None:
        """span ← Q of its QR (removes the drift of many Gram–Schmidt steps; the spanned space is unchanged)."""
        if self.span.shape[1]:
            self.span = torch.linalg.qr(self.span).Q

    @property
    def sketch(self) -> torch.Tensor:
        """The current sketch B with at most ℓ rows, (≤ℓ, dim); shrinks a copy when more rows are held."""
        if self.next_row <= self.ell:
            return self.buffer[: self.next_row].clone()
        out, keep, _ = self._shrink(self.buffer[: self.next_row])
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
        """Buffer, fill counter and span (plain tensors and ints; loadable with weights_only=True)."""
        state = {"dim": self.dim, "ell": self.ell, "buffer": self.buffer.clone(), "next_row": self.next_row}
        return state | {"span": self.span.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; dim and ell must match."""
        rows = int(state["buffer"].shape[0])
        if int(state["dim"]) != self.dim or int(state["ell"]) != self.ell or rows != self.buffer.shape[0]:
            raise ValueError(
                f"FrequentDirections state has dim={state['dim']}, ell={state['ell']}, rows={rows}; "
                f"this sketch has dim={self.dim}, ell={self.ell}, rows={self.buffer.shape[0]}."
            )
        self.buffer = state["buffer"].to(device=self.buffer.device, dtype=self.buffer.dtype).clone()
        self.next_row = int(state["next_row"])
        span = state.get("span")
        self.span = span.to(self.buffer).clone() if span is not None else self.basis(self.buffer.shape[0])


def _tol(x: torch.Tensor) -> float:
    """Relative size below which a direction counts as numerically zero: √eps of the dtype."""
    return float(torch.finfo(x.dtype).eps) ** 0.5


def _extend(span: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """[span, r/‖r‖] with r = row − span spanᵀ row (Gram–Schmidt, twice for orthogonality in float32); span itself
    when r is numerically zero (the row is already in the span)."""
    norm = torch.linalg.vector_norm(row)
    r = row
    for _ in range(2):
        r = r - span @ (span.T @ r)  # (dim,)
    rest = torch.linalg.vector_norm(r)
    if not bool(rest > _tol(row) * norm):  # one host sync per row; also false for a zero row
        return span
    return torch.cat([span, (r / rest)[:, None]], dim=1)

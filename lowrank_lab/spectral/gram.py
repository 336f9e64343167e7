"""Streaming input statistics for the data-weighted subspace: Σ xᵢ xᵢᵀ, n, and an optional row sample."""

from __future__ import annotations

import torch


class GramAccumulator:
    """Accumulates gram = Σ xᵢᵀxᵢ (d_in, d_in, float64) and n from batches x: (..., d_in).

    With max_rows, also keeps a uniform sample (without replacement) of at most max_rows rows, drawn with a
    seeded generator (bottom-k on random keys), so the same batches and seed give the same sample.
    """

    def __init__(self, d_in: int, max_rows: int | None = None, seed: int = 0) -> None:
        if d_in <= 0:
            raise ValueError(f"d_in={d_in} must be a positive feature dimension.")
        if max_rows is not None and max_rows <= 0:
            raise ValueError(f"max_rows={max_rows} must be a positive row count or None (no sample).")
        self.d_in = d_in
        self.max_rows = max_rows
        self._generator = torch.Generator().manual_seed(seed)
        self._gram = torch.zeros(d_in, d_in, dtype=torch.float64)
        self._n = 0
        self._sample: torch.Tensor | None = None  # (m, d_in), m ≤ max_rows
        self._keys: torch.Tensor | None = None  # (m,) random keys of the kept rows

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch x: (..., d_in) (any leading shape, e.g. (batch, tokens, d_in))."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"x must have last dimension d_in={self.d_in}, got shape {tuple(x.shape)}.")
        rows = x.detach().reshape(-1, self.d_in)
        if rows.shape[0] == 0:
            return
        if self._n == 0 and self._gram.device != rows.device:
            self._gram = self._gram.to(rows.device)  # live where the activations live
        rows64 = rows.to(device=self._gram.device, dtype=torch.float64)
        with torch.autocast(device_type=rows64.device.type, enabled=False):
            self._gram += rows64.T @ rows64  # (d_in, d_in)
        self._n += rows.shape[0]
        if self.max_rows is not None:
            self._update_sample(rows)

    def _update_sample(self, rows: torch.Tensor) -> None:
        """Keep the max_rows rows with the smallest uniform keys so far: a uniform sample of the stream."""
        rows = rows.float() if rows.dtype != torch.float64 else rows
        keys = torch.rand(rows.shape[0], generator=self._generator)  # (b,) drawn on CPU for reproducibility
        if self._sample is not None:
            rows = torch.cat([self._sample, rows.to(device=self._sample.device, dtype=self._sample.dtype)])
            keys = torch.cat([self._keys, keys])
        if rows.shape[0] > self.max_rows:
            keep = torch.topk(keys, self.max_rows, largest=False).indices.sort().values
            rows, keys = rows[keep.to(rows.device)], keys[keep]
        self._sample, self._keys = rows, keys

    @property
    def gram(self) -> torch.Tensor:
        """Σ xᵢᵀxᵢ: (d_in, d_in) float64."""
        return self._gram

    @property
    def n(self) -> int:
        """Number of rows seen."""
        return self._n

    @property
    def covariance(self) -> torch.Tensor:
        """Uncentred second moment Σ = xᵀx / n: (d_in, d_in) float64."""
        if self._n == 0:
            raise ValueError("GramAccumulator has seen no rows yet; call update(x) before reading covariance.")
        return self._gram / self._n

    @property
    def sample(self) -> torch.Tensor | None:
        """The kept rows (m, d_in), m = min(n, max_rows), in stream order; None when max_rows is None."""
        if self.max_rows is None:
            return None
        return self._sample if self._sample is not None else torch.zeros(0, self.d_in)

    def reset(self) -> None:
        """Forget everything seen so far (the sample generator keeps its state)."""
        self._gram = torch.zeros_like(self._gram)
        self._n = 0
        self._sample = self._keys = None

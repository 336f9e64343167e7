"""Feature alignment between two encoders (SLAD's `align/cka`): linear CKA streamed over validation batches."""

from __future__ import annotations

import torch


class StreamingCKA:
    """Linear CKA of row-aligned features streamed in chunks x (n, d1), y (n, d2): float64 running sums of Σx, Σy,
    XᵀX, YᵀY, YᵀX; equals metrics.forgetting.linear_cka on the concatenated rows."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] | None = None
        self.n = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.double(), y.double()
            terms = [x.sum(0), y.sum(0), x.T @ x, y.T @ y, y.T @ x]
        self.sums = terms if self.sums is None else [a + b for a, b in zip(self.sums, terms)]
        self.n += x.shape[0]

    def compute(self) -> torch.Tensor:
        sx, sy, xx, yy, yx = self.sums
        cxx, cyy = xx - torch.outer(sx, sx) / self.n, yy - torch.outer(sy, sy) / self.n  # Xcᵀ Xc, Ycᵀ Yc
        cyx = yx - torch.outer(sy, sx) / self.n  # Ycᵀ Xc: (d2, d1)
        norm = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        return cyx.pow(2).sum() / norm.clamp_min(torch.finfo(torch.float64).tiny)

    def reset(self) -> None:
        self.sums, self.n = None, 0


def feature_rows(
    h_t: torch.Tensor, h_s: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-aligned features: every real token (text, `mask` = attention mask) or patch (vision); (B, T, d) -> (N, d).
    Token grids that differ between the encoders fall back to one mean-pooled row per example."""
    if h_t.shape[:2] != h_s.shape[:2]:
        return h_t.mean(1), h_s.mean(1)
    if mask is None:
        return h_t.flatten(0, 1), h_s.flatten(0, 1)
    keep = mask.bool()
    return h_t[keep], h_s[keep]

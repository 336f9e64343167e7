"""Linear CKA between two representations, as a torchmetrics Metric streamed over batches: SLAD's `align/cka`
(teacher vs student) and forgetting's `cka_drift` (adapted vs base)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class LinearCKA(Metric):
    """Linear CKA of row-aligned features streamed in chunks x (n, d1), y (n, d2):
    CKA = ‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F) with column-centred Xc, Yc, from float64 running sums of Σx, Σy,
    XᵀX, YᵀY, YᵀX (summed across DDP ranks like any torchmetrics state). In [0, 1]; 1 for representations equal up
    to rotation and isotropic scale."""

    full_state_update = False

    def __init__(self, d1: int, d2: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        f64 = torch.float64
        for name, shape in (("sx", (d1,)), ("sy", (d2,)), ("xx", (d1, d1)), ("yy", (d2, d2)), ("yx", (d2, d1))):
            self.add_state(name, default=torch.zeros(shape, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.detach().double(), y.detach().double()
            self.sx += x.sum(0)
            self.sy += y.sum(0)
            self.xx += x.T @ x
            self.yy += y.T @ y
            self.yx += y.T @ x
            self.n += x.shape[0]

    def compute(self) -> torch.Tensor:
        n = self.n.clamp_min(1.0)
        cxx = self.xx - torch.outer(self.sx, self.sx) / n  # Xcᵀ Xc
        cyy = self.yy - torch.outer(self.sy, self.sy) / n  # Ycᵀ Yc
        cyx = self.yx - torch.outer(self.sy, self.sx) / n  # Ycᵀ Xc: (d2, d1)
        norm = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        return cyx.pow(2).sum() / norm.clamp_min(torch.finfo(torch.float64).tiny)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of all rows at once, x (n, d1), y (n, d2): a float64 scalar (LinearCKA over one chunk)."""
    metric = LinearCKA(x.shape[1], y.shape[1]).to(x.device)
    metric.update(x, y)
    return metric.compute()


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

"""`data=synthetic`: the linear teacher–student setting as a LightningDataModule of {"x", "y"} batches.

Train rows are the setting's x (xᵀx/n = Σ exactly); val/test rows are fresh draws x = z Σ^{1/2}, z ~ N(0, I).
For linear students (the SAD theorem checks), not for the text models of run.py.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.synthetic.setting import SyntheticSetting, make_setting, sqrtm_psd


class _Pairs(Dataset):
    """Rows of x (n, d_in) and y (n, d_out) as {"x": (d_in,), "y": (d_out,)} items."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class SyntheticDataModule(L.LightningDataModule):
    """Batches {"x": (b, d_in), "y": (b, d_out)} with y = (W0 + ΔW) x; `setting` holds W0, ΔW, Σ (float64)."""

    def __init__(
        self,
        spectrum: str = "gradual",
        covariance: str = "misaligned",
        d_out: int = 48,
        d_in: int = 32,
        n: int = 256,
        n_eval: int = 256,
        cond: float = 100.0,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.kwargs = dict(spectrum=spectrum, covariance=covariance, d_out=d_out, d_in=d_in, n=n, cond=cond, seed=seed)
        self.n_eval, self.seed, self.batch_size = n_eval, seed, batch_size
        self.task = TaskSpec("synthetic", num_labels=d_out, metric="mse", metrics=("mse",), regression=True)
        self.setting: SyntheticSetting | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.setting is not None:
            return
        self.setting = s = make_setting(**self.kwargs)
        gen = torch.Generator().manual_seed(self.seed + 1)
        w = s.w0 + s.delta_w  # teacher weight (d_out, d_in)
        eval_x = torch.randn(2 * self.n_eval, s.x.shape[1], generator=gen, dtype=torch.float64) @ sqrtm_psd(s.sigma)
        self.splits = {
            "train": _Pairs(s.x, s.y),
            "val": _Pairs(eval_x[: self.n_eval], eval_x[: self.n_eval] @ w.T),
            "test": _Pairs(eval_x[self.n_eval :], eval_x[self.n_eval :] @ w.T),
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle, generator=gen)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

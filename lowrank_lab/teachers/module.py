"""The frozen teacher module a distillation method holds: always in eval mode, runs under no_grad; when it was
fine-tuned from the student's base (SAD-style) it carries ΔW_T per adapted matrix and serves the spectral targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank_lab.errors import LabError
from lowrank_lab.teachers.settings import SAD_MISMATCH
from lowrank_lab.teachers.targets import Targets, cached_targets, extract_targets, targets_path


class Teacher(nn.Module):
    """A frozen teacher model. delta: ΔW_T (d_out, d_in) per target module when it was fine-tuned from the
    student's base (SAD-style), else None."""

    def __init__(
        self,
        model: nn.Module,
        key: str = "teacher",
        delta: dict[str, torch.Tensor] | None = None,
        info: dict[str, Any] | None = None,
        data_key: Any = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.key, self.delta, self.info, self.data_key = key, delta, dict(info or {}), data_key
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.last_targets_path: Path | None = None
        self._targets: dict[tuple[int, int], Targets] = {}

    @property
    def sad_style(self) -> bool:
        return bool(self.delta)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # Lightning's .train() never turns dropout on in the teacher

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor], hidden: bool = False) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs, output_hidden_states=hidden) if hidden else self.model(**inputs)

    def targets(self, datamodule: Any, rank: int, n_calib: int) -> Targets:
        """name -> {u_target, sigma_weighted, sigma_target} from `n_calib` tokens of the task's training data;
        memoised, and cached on disk by teacher + data + rank + n_calib (teachers.targets)."""
        if not self.sad_style:
            raise LabError(SAD_MISMATCH)
        if (rank, n_calib) not in self._targets:
            path = None
            if self.cache_dir is not None:
                path = targets_path(self.cache_dir, self.key, self.data_key, list(self.delta), rank, n_calib)
            compute = lambda: extract_targets(self.model, self.delta, datamodule, rank, n_calib)  # noqa: E731
            self._targets[(rank, n_calib)] = cached_targets(path, compute)
            self.last_targets_path = path
        return self._targets[(rank, n_calib)]

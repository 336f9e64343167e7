"""What a checkpoint needs, beyond Lightning's own state, for a resumed job to continue exactly where it stopped:
the random number generators' states (dropout masks after the resume equal an uninterrupted run's) and a
`last.ckpt` written at the step a SIGTERM (kill, scancel) stopped the job. The train loader's position in its
epoch is the loader's own state (data.sampler.ResumableLoader)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class ExactResume(L.Callback):
    """Saves the RNG states in every checkpoint and restores them before the first batch after a resume; on
    SIGTERM during fit, writes `<checkpoint dir>/last.ckpt` at the step reached (only then: a job stopped by a
    non-finite loss or a bug must not leave a checkpoint a rerun would resume from)."""

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self._restore: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        fit = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loader_states = list(fit.get("state_dict", {}).get("combined_loader", []))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores a stateful train loader only when it builds the loaders after the restore; a
        # scheduler's `estimated_stepping_batches` builds them before, so the saved position is handed over here
        # (before the first batch is drawn: ResumableLoader reads it then)
        states, self._loader_states = self._loader_states, []
        loaders = trainer.train_dataloader
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict")]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict.get("rng")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._restore is not None:
            set_rng_states(self._restore)
            self._restore = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return
        if checkpoint.save_last:  # as ModelCheckpoint's own last.ckpt (lightning pinned): it then keeps overwriting
            checkpoint._save_last_checkpoint(trainer, checkpoint._monitor_candidates(trainer))  # it, no last-v1
        else:
            trainer.save_checkpoint(Path(checkpoint.dirpath) / self.filename)

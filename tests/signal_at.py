"""A test-only callback: the job sends itself a signal after a given optimizer step (a kill or scancel at a known
point of training, e.g. `+callbacks.kill._target_=tests.signal_at.SignalAtStep +callbacks.kill.step=5`)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAtStep(L.Callback):
    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step, self.signum = step, signal.Signals[signal_name]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

"""Preemption and timeouts under submitit: on submitit's signal (USR2), save `checkpoints/last.ckpt`, then hand over
to submitit, which pickles the job, runs `scontrol requeue` and exits. The requeued job reruns the same config in the
same job directory, where `train.py` finds `last.ckpt` and the MLflow run id and carries on.

Lightning's own SLURM auto-requeue (USR1, its own `scontrol requeue`) is switched off here: it saves
`hpc_ckpt_*.ckpt`, which train.py does not resume from, and knows nothing of submitit's pickle.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's knob; its default is USR2


class Requeued(SystemExit):
    """The job was checkpointed and requeued: its run goes on in the next attempt (`run_status` for MLflow)."""

    run_status = "SCHEDULED"


class RequeueOnSignal(L.Callback):
    """Checkpoint on submitit's preemption signal at the next safe point, then let submitit requeue the job.

    Safe points: the end of a training batch, or for the epoch's last batch the end of the epoch (after its
    validation). An end-of-epoch checkpoint resumes exactly; a mid-epoch one only if the train dataloader is
    resumable (Lightning warns otherwise: the epoch's batches are replayed from its start). Outside submitit (nobody
    handles the signal) the callback does nothing.
    """

    def __init__(self, signal_name: str | None = None, filename: str = "last.ckpt") -> None:
        name = signal_name or os.environ.get(SIGNAL_ENV, "USR2")
        self.signum = signal.Signals["SIG" + name.upper().removeprefix("SIG")]
        self.filename = filename
        self._submitit: Any = None  # the handler found at fit start (submitit's), called once last.ckpt is written
        self._armed = False  # fitting and not yet handed over: a signal waits for the next safe point
        self._pending = False

    # -- Lightning hooks, in the order they run --------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if isinstance(env, SLURMEnvironment):
            env.auto_requeue = False  # read by Lightning's signal connector after this hook

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        current = signal.getsignal(self.signum)
        if current != self._on_signal:  # (Lightning's teardown may have left ours installed after an earlier fit)
            self._submitit = current if callable(current) else None
        if self._submitit is None or threading.current_thread() is not threading.main_thread():
            return  # not under submitit: the signal keeps its usual meaning
        self._armed, self._pending = True, False
        signal.signal(self.signum, self._on_signal)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if not last:  # for the epoch's last batch, the epoch's end is the better place
            self._maybe_requeue(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_requeue(trainer)  # after the epoch's validation, as ModelCheckpoint(save_on_train_epoch_end)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._armed and self._pending:  # the signal came after the last safe point; ModelCheckpoint has
            self._hand_over(trainer)  # saved last.ckpt at the end of fit: requeue now
        self._disarm()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._disarm()

    # -- the hand-over -----------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._armed:
            self._pending = True  # a checkpoint written from inside a signal handler could catch a half-done step
        elif self._submitit is not None:  # after fit (Lightning's teardown reinstalls this handler): pass it on
            self._submitit(signum, frame)

    def _maybe_requeue(self, trainer: L.Trainer) -> None:
        if not self._armed:
            return
        pending = self._pending
        if trainer.world_size > 1:  # every rank saves together (save_checkpoint is collective)
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if pending:
            trainer.save_checkpoint(self.checkpoint_path(trainer))
            self._hand_over(trainer)

    def _hand_over(self, trainer: L.Trainer) -> None:
        self._disarm()
        try:
            self._submitit(self.signum, None)  # submitit on rank 0: pickle the job, `scontrol requeue`, exit
        except SystemExit as stop:
            raise Requeued(stop.code) from None
        if trainer.global_rank != 0:  # submitit only requeues from rank 0; the others stop with it
            raise Requeued(-1)

    def _disarm(self) -> None:
        self._armed = self._pending = False
        if self._submitit is not None and signal.getsignal(self.signum) == self._on_signal:
            signal.signal(self.signum, self._submitit)

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """`<job dir>/checkpoints/last.ckpt`: where ModelCheckpoint keeps it and where train.py looks for it."""
        ckpt = trainer.checkpoint_callback
        folder = getattr(ckpt, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / self.filename

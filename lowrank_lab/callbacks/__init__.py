"""Lightning callbacks of the platform (named by `_target_` in conf/callbacks/)."""

from lowrank_lab.callbacks.requeue import Requeued, RequeueOnSignal

__all__ = ["RequeueOnSignal", "Requeued"]

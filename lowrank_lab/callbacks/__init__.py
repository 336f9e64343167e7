"""Lightning callbacks of the platform (named by `_target_` in conf/callbacks/)."""

from lowrank_lab.callbacks.requeue import Requeued, RequeueOnSignal
from lowrank_lab.callbacks.resume import ExactResume

__all__ = ["ExactResume", "RequeueOnSignal", "Requeued"]

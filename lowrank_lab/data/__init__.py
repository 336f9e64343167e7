"""LightningDataModules: GLUE text classification/regression (more workloads plug in through `data=`)."""

from lowrank_lab.data.glue import GLUE_TASKS, GlueDataModule
from lowrank_lab.data.task import TaskSpec

__all__ = ["GLUE_TASKS", "GlueDataModule", "TaskSpec"]

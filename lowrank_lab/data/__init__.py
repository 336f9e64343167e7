"""LightningDataModules: GLUE text classification/regression, instruction and plain-text causal LM data, digits
vision (classification + segmentation); each selected by `data=`."""

from lowrank_lab.data.glue import GLUE_TASKS, GlueDataModule
from lowrank_lab.data.instruct import InstructDataModule
from lowrank_lab.data.lm_text import TextDataModule
from lowrank_lab.data.task import GenerationProbe, TaskSpec
from lowrank_lab.data.vision import DigitsClassificationDataModule, DigitsSegmentationDataModule

__all__ = [
    "GLUE_TASKS",
    "DigitsClassificationDataModule",
    "DigitsSegmentationDataModule",
    "GenerationProbe",
    "GlueDataModule",
    "InstructDataModule",
    "TaskSpec",
    "TextDataModule",
]

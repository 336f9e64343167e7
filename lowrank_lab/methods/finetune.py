"""`method=finetune`: the task loss alone (with `peft=none`, full fine-tuning)."""

from lowrank_lab.methods.base import AdapterModule


class FinetuneModule(AdapterModule):
    """L = L_task."""

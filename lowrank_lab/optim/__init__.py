"""Optimizer wrappers selected by `optim=`: Riemannian preconditioning of LoRA factors (any method, any torch
optimizer) and peft's frozen-A LoRA-FA optimizer."""

from lowrank_lab.optim.precondition import lora_pairs, precondition_grads, preconditioned
from lowrank_lab.optim.spec import FrozenAOptim, OptimSpec

__all__ = ["FrozenAOptim", "OptimSpec", "lora_pairs", "precondition_grads", "preconditioned"]

"""lowrank_lab: a Hydra-composed experiment platform for low-rank adaptation and distillation."""

__version__ = "0.1.0"

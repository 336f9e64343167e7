"""Adapter initialisations (`init=`): each turns into LoraConfig kwargs, an optional pre-wrap data pass
(`wrap`) and/or a step run after wrapping (`apply`)."""

from lowrank_lab.adapters.init.base import Initializer, PeftBuiltinInit, init_rng
from lowrank_lab.adapters.init.corda import CordaInit
from lowrank_lab.adapters.init.eva import EvaInit

__all__ = ["CordaInit", "EvaInit", "Initializer", "PeftBuiltinInit", "init_rng"]

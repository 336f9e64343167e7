"""Adapter initialisations (`init=`): each turns into LoraConfig kwargs and/or a step run after wrapping."""

from lowrank_lab.adapters.init.base import Initializer, PeftBuiltinInit

__all__ = ["Initializer", "PeftBuiltinInit"]

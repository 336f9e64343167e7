"""peft wrapping of a backbone: adapter specs (`peft=`), initialisations (`init=`), validation."""

from lowrank_lab.adapters.lora import FullFinetune, LoraSpec
from lowrank_lab.adapters.wrap import adapted_modules, wrap

__all__ = ["FullFinetune", "LoraSpec", "adapted_modules", "wrap"]

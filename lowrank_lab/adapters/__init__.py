"""peft wrapping of a backbone: adapter specs (`peft=`), initialisations (`init=`), validation, KaSA's
regulariser and the adapter loader."""

from lowrank_lab.adapters.init import Initializer, PeftBuiltinInit
from lowrank_lab.adapters.kasa import KasaSpec, get_kasa_regularization_loss
from lowrank_lab.adapters.load import load_adapter
from lowrank_lab.adapters.lora import FullFinetune, LoraSpec
from lowrank_lab.adapters.wrap import adapted_modules, wrap

__all__ = [
    "FullFinetune",
    "Initializer",
    "KasaSpec",
    "LoraSpec",
    "PeftBuiltinInit",
    "adapted_modules",
    "get_kasa_regularization_loss",
    "load_adapter",
    "wrap",
]

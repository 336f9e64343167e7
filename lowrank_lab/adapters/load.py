"""`load_adapter(base_model, path)`: reload a saved adapter with `PeftModel.from_pretrained`, redoing first what
an adapter changed in its base so that the logits equal the trained model's."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from peft import PeftConfig, PeftModel

from lowrank_lab.adapters.init.base import Initializer, init_rng
from lowrank_lab.adapters.init.corda import CordaInit
from lowrank_lab.adapters.init.gradient import GradientInit
from lowrank_lab.adapters.wrap import check_adapter_mix
from lowrank_lab.errors import bad_value

# inits that change the base in a way peft does not redo from the adapter alone; each redoes its own on reload
BASE_CHANGING: tuple[type[Initializer], ...] = (CordaInit, GradientInit)


def load_adapter(
    base_model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False
) -> nn.Module:
    """Load the adapter saved at `path` onto `base_model`, a fresh copy of the base it was trained on (or a peft
    model, to which it is added as `adapter_name`). What the init changed in the base is redone
    deterministically: KaSA's truncation and PiSSA/OLoRA's residual by peft itself, a randomized PiSSA SVD under
    its fixed seed, CorDA's factors from the cache file named in the adapter config, init=gradient's W − s·B₀A₀
    from the `init_offset.safetensors` saved next to the adapter."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise bad_value("adapter path", str(path), "a directory written by save_pretrained (adapter_config.json)")
    config = PeftConfig.from_pretrained(str(path))
    check_adapter_mix(getattr(base_model, "peft_config", None), config)
    for init in BASE_CHANGING:
        init.before_reload(base_model, config, path)
    with init_rng(getattr(config, "init_lora_weights", True)):
        if isinstance(base_model, PeftModel):
            base_model.load_adapter(str(path), adapter_name, is_trainable=is_trainable)
            return base_model
        model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    for init in BASE_CHANGING:
        init.after_reload(model, path)
    return model

"""`load_adapter(base_model, path)`: reload a saved adapter with `PeftModel.from_pretrained`, redoing first what
an adapter changed in its base so that the logits equal the trained model's."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from peft import PeftConfig, PeftModel
from peft.tuners.lora.corda import preprocess_corda

from lowrank_lab.adapters.init.base import init_rng
from lowrank_lab.adapters.init.gradient import OFFSET_FILE, apply_init_offset
from lowrank_lab.adapters.wrap import check_adapter_mix
from lowrank_lab.errors import bad_value


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
    init = getattr(config, "init_lora_weights", True)
    if init == "corda":
        cache = getattr(config.corda_config, "cache_file", None)
        if not cache or not Path(cache).is_file():
            raise bad_value("corda_config.cache_file", cache, "the CorDA cache this adapter was made with; rerun init")
        preprocess_corda(base_model, config)  # eigen-factors from the cache; corda_init then rebuilds the residual
    offset = (path / OFFSET_FILE).is_file()
    if offset and isinstance(base_model, PeftModel):
        raise bad_value("adapter path", str(path), "loaded onto a plain base (its init moved s·B₀A₀ out of the base)")
    with init_rng(init):
        if isinstance(base_model, PeftModel):
            base_model.load_adapter(str(path), adapter_name, is_trainable=is_trainable)
            return base_model
        model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    if offset:
        apply_init_offset(model, path)  # after peft built the layers (and KaSA truncated), as at init
    return model

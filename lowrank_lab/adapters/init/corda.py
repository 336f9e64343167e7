"""`init=corda`: CorDA (arXiv:2406.05223) through peft's `preprocess_corda`, which must see the data before peft
builds the layers, so it runs in `wrap`.

    C = E[xᵀx] over the data pass,  W C = U S Vᵀ,  B = U_r √S_r,  A = √S_r V_rᵀ C⁻¹   (ipm: top r; kpm: bottom r)
    base ← W − scaling·B·A   (the output is unchanged at step 0)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import preprocess_corda, target_modules

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.adapters.init.calibration import cache_file, calibration_samples, target_modules_key
from lowrank_lab.cache import atomic_write, get_or_build
from lowrank_lab.errors import bad_value


class CordaInit(Initializer):
    """Context-oriented decomposition of W against the input covariance of `num_samples` training examples;
    the eigen-factors are cached under `cache_dir` by model + data + rank."""

    name = "corda"
    needs_data = True

    def __init__(self, corda_method: str = "ipm", num_samples: int = 256, cache_dir: str = "outputs/init_cache"):
        if corda_method not in ("ipm", "kpm"):
            raise bad_value(
                "init.corda_method", corda_method, "ipm (instruction-previewed) or kpm (knowledge-preserved)"
            )
        if num_samples < 1:
            raise bad_value("init.num_samples", num_samples, "a positive number of training examples")
        self.corda_method, self.num_samples, self.cache_dir = corda_method, num_samples, cache_dir

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": "corda", "corda_config": CordaConfig(corda_method=self.corda_method)}

    @torch.no_grad()
    def wrap(self, model: nn.Module, config: LoraConfig, datamodule: Any = None) -> nn.Module:
        samples = calibration_samples(self.require_data(datamodule), self.num_samples, model)
        settings = {"method": self.corda_method, "r": config.r, "targets": target_modules_key(config)}
        path = cache_file(self.cache_dir, "corda", model, samples, settings)

        def run_model() -> None:
            # peft's covariance hook takes one example per forward, (1, T, d) -> (T, d); a layer fed (1, d) (a pooler)
            # gets a length-1 sequence axis for this pass, else its covariance would collapse to a scalar.
            handles = [m.register_forward_pre_hook(_as_sequence) for _, m in target_modules(model, config)]
            try:
                for sample in samples:
                    model(**sample)
            finally:
                for handle in handles:
                    handle.remove()

        def preprocess(cache: Path, run: Callable[[], None] | None) -> None:
            """peft's pass: eigen-factors onto the target modules, read from `cache` (run=None) or written there."""
            config.corda_config.cache_file = str(cache)
            preprocess_corda(model, config, run_model=run)

        build = lambda: atomic_write(path, lambda tmp: preprocess(tmp, run_model))  # noqa: E731
        get_or_build(path, build, load=lambda cache: preprocess(cache, None), what="CorDA init")
        config.corda_config.cache_file = str(path)  # also recorded in adapter_config.json, for `load_adapter`
        return get_peft_model(model, config)

    @classmethod
    def before_reload(cls, base_model: nn.Module, config: Any, adapter_dir: Path) -> None:
        """An adapter made by CorDA: its eigen-factors again from the cache file named in its config, so that peft's
        corda init rebuilds the same residual base."""
        if getattr(config, "init_lora_weights", None) != "corda":
            return
        cache = getattr(config.corda_config, "cache_file", None)
        if not cache or not Path(cache).is_file():
            raise bad_value("corda_config.cache_file", cache, "the CorDA cache this adapter was made with; rerun init")
        preprocess_corda(base_model, config)


def _as_sequence(module: nn.Module, args: tuple) -> tuple | None:
    """(1, d) -> (1, 1, d): a pre-hook for the calibration forward only."""
    return (args[0].unsqueeze(1), *args[1:]) if args and args[0].dim() == 2 else None

"""`init=eva`: EVA (Explained Variance Adaptation, arXiv:2410.07170) through peft's `get_eva_state_dict` /
`initialize_lora_eva_weights`, run after wrapping on the first training batches.

    X = layer inputs over the data pass,  X ≈ U S Vᵀ (incremental SVD),  A = V_rᵀ,  B = 0  (output unchanged at step 0)
    ranks move between layers by explained variance, up to ρ·r per layer (`rho`; 1 keeps r everywhere)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from peft import initialize_lora_eva_weights
from peft.tuners.lora.config import EvaConfig
from peft.tuners.lora.eva import _Hook, get_eva_state_dict, prepare_layer_inputs_fn_language_modeling
from safetensors.torch import load_file, save_file

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.adapters.init.calibration import cache_file, calibration_batches, target_modules_key
from lowrank_lab.cache import get_or_build
from lowrank_lab.errors import LabError, bad_value


class EvaInit(Initializer):
    """A from the top right-singular vectors of each layer's inputs over `num_batches` training batches; the
    per-layer A (and redistributed ranks) are cached under `cache_dir` by model + data + rank."""

    name = "eva"
    needs_data = True
    rebuilds_layers = True  # a layer whose rank changes is rebuilt by peft

    def __init__(
        self,
        rho: float = 2.0,
        tau: float = 0.99,
        whiten: bool = False,
        adjust_scaling_factors: bool = True,
        num_batches: int = 16,
        max_forwards: int = 1000,
        cache_dir: str = "outputs/init_cache",
    ) -> None:
        if rho < 1.0:
            raise bad_value("init.rho", rho, "a number >= 1 (the largest rank a layer may get is rho·r)")
        if not 0.0 <= tau <= 1.0:
            raise bad_value("init.tau", tau, "a cosine-similarity threshold in [0, 1]")
        if num_batches < 1:
            raise bad_value("init.num_batches", num_batches, "a positive number of training batches")
        self.eva_config = EvaConfig(rho=rho, tau=tau, whiten=whiten, adjust_scaling_factors=adjust_scaling_factors)
        self.num_batches, self.max_forwards, self.cache_dir = num_batches, max_forwards, cache_dir

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": "eva", "eva_config": self.eva_config}

    @torch.no_grad()
    def apply(self, model: nn.Module, datamodule: Any = None, teacher: Any = None) -> None:
        batches = calibration_batches(self.require_data(datamodule), self.num_batches, model)
        config = model.peft_config["default"]
        settings = {"eva": vars(self.eva_config), "r": config.r, "targets": target_modules_key(config)}
        path = cache_file(self.cache_dir, "eva", model, batches, settings)
        state = get_or_build(
            path,
            lambda: self._eva_state_dict(model, batches),
            load=load_file,
            save=lambda state, tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp)),
            what="EVA init",
        )
        device = batches[0]["input_ids"].device
        initialize_lora_eva_weights(model, eva_state_dict={k: v.to(device) for k, v in state.items()})

    def _eva_state_dict(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """peft's incremental SVD, cycling over `batches` until every layer converges; a layer that can never get
        rho·r rows per batch, or no convergence within `max_forwards`, stops it with one line."""
        forwards, needed = 0, round(model.peft_config["default"].r * self.eva_config.rho)

        def forward(m: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
            nonlocal forwards
            forwards += 1
            if forwards > self.max_forwards:
                allowed = f"a value EVA reaches within init.max_forwards={self.max_forwards} (or lower init.rho)"
                raise bad_value("init.tau", self.eva_config.tau, allowed)
            return m(**inputs)

        def rows(layer_input: Any, model_input: torch.Tensor, layer_name: str) -> torch.Tensor:
            """The unpadded tokens of (B, T, d) inputs (peft's default), every example of (B, d) ones (a pooler)."""
            x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
            if x.dim() > 2:
                return prepare_layer_inputs_fn_language_modeling(x, model_input, layer_name)
            if x.shape[0] < needed:
                allowed = f"at least rho·r = {needed} with init=eva: {layer_name} sees one row per example"
                raise bad_value("data.batch_size", x.shape[0], allowed)
            return x.contiguous()

        try:
            return get_eva_state_dict(
                model, batches, forward_fn=forward, prepare_layer_inputs_fn=rows, show_progress_bar=False
            )
        except LabError:
            for module in model.modules():  # peft leaves its hooks on when the pass is cut short
                for key, hook in list(module._forward_hooks.items()):
                    if isinstance(hook, _Hook):
                        del module._forward_hooks[key]
            raise

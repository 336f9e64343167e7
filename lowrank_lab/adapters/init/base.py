"""The init mechanism every `init=` entry goes through, in the order `adapters.wrap` and `train.run` call it:
`lora_kwargs()` for LoraConfig → `check(spec, layers)` → `wrap(model, config, datamodule)` (injects the adapter; an
init that must see the data before peft builds the layers, like CorDA, does its pass here) → `apply(model, …)`
after wrapping (data- or teacher-aware inits that set A and B on the built layers, like EVA)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model

from lowrank_lab.errors import bad_value

INIT_SEED = 0  # randomized SVD of `pissa_niter_*` runs under this seed, at wrap and at reload alike


class Initializer:
    """Base and `init=default`: peft's LoRA init (A Kaiming-uniform, B = 0, so ΔW = 0 at step 0)."""

    name: str = "default"
    needs_data: bool = False  # wrap() and apply() need the datamodule (a data pass)
    needs_teacher: bool = False  # apply() needs the teacher
    rebuilds_layers: bool = False  # apply() re-creates adapter layers (EVA's rank redistribution)

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": True}

    def check(self, spec: Any, layers: dict[str, nn.Module]) -> None:
        """Reject a spec this init cannot initialise (before any wrapping); `layers`: name -> target module."""

    def wrap(self, model: nn.Module, config: LoraConfig, datamodule: Any = None) -> nn.Module:
        """Inject the adapter described by `config` into `model` (peft runs `init_lora_weights` per layer)."""
        return get_peft_model(model, config)

    def apply(self, model: nn.Module, datamodule: Any = None, teacher: Any = None) -> None:
        """Post-wrap initialisation; the default has nothing to do. With `peft=kasa`, an init that writes B here
        calls `adapters.kasa.unit_diag_where_initialised(model)` at the end so that ΔW₀ = scaling·B₀A₀."""

    def pick_ranks(self, teacher: Any, datamodule: Any) -> dict[str, int]:
        """`peft.lora_r=auto`: layer name -> r chosen by this init (before wrapping); only inits that can pick one
        (init=spectral, from the teacher's spectrum) override this."""
        from lowrank_lab.adapters.lora import AUTO, AUTO_NEEDS

        raise bad_value("peft.lora_r", AUTO, f"{AUTO_NEEDS}; init={self.name} cannot pick a rank")

    # What an init changed in the base that peft cannot redo from the saved adapter: train.py calls `save` next to
    # the adapter; adapters.load_adapter calls both reload hooks of every init in adapters.load.BASE_CHANGING, and
    # each acts only on an adapter its own init made (by its adapter config or the file `save` wrote).
    def save(self, model: nn.Module, adapter_dir: Path) -> None:
        """Write next to the saved adapter what this init changed in `model`'s base (most inits: nothing; peft
        itself redoes PiSSA's / OLoRA's residual and KaSA's truncation on reload)."""

    @classmethod
    def before_reload(cls, base_model: nn.Module, config: Any, adapter_dir: Path) -> None:
        """load_adapter, before peft builds the layers on `base_model` from the adapter at `adapter_dir`."""

    @classmethod
    def after_reload(cls, model: nn.Module, adapter_dir: Path) -> None:
        """load_adapter, after peft built the layers (and KaSA truncated the base), as at init."""

    def require_data(self, datamodule: Any) -> Any:
        """The datamodule, or the one-line error for an init that needs a data pass and got none."""
        if datamodule is None:
            raise bad_value("init", self.name, "a datamodule for its data pass (none was given); or init=default")
        return datamodule


@contextlib.contextmanager
def init_rng(init_lora_weights: Any) -> Iterator[None]:
    """Fix the RNG for peft inits whose result depends on it (randomized SVD), so a reload redoes the same init."""
    if not (isinstance(init_lora_weights, str) and init_lora_weights.startswith("pissa_niter")):
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        yield


class PeftBuiltinInit(Initializer):
    """A peft built-in chosen by `init_lora_weights`: `pissa` (A, B = principal singular factors of W; base ← W −
    scaling·BA, output unchanged), `pissa` + `niter` (randomized SVD), `olora` (QR: B = Q_r, A = R_r; base ← W −
    scaling·BA), `orthogonal` (A, B ≠ 0 from the odd / even rows of one orthogonal matrix, so B·A = 0; even r), …"""

    def __init__(self, init_lora_weights: str | bool = True, niter: int | None = None) -> None:
        self.value = f"pissa_niter_{niter}" if init_lora_weights == "pissa" and niter else init_lora_weights
        self.name = str(init_lora_weights)

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": self.value}

    def check(self, spec: Any, layers: dict[str, nn.Module]) -> None:
        if self.value == "orthogonal" and spec.lora_r % 2:
            raise bad_value("peft.lora_r", spec.lora_r, "an even rank with init=orthogonal")

    def wrap(self, model: nn.Module, config: LoraConfig, datamodule: Any = None) -> nn.Module:
        with init_rng(self.value):
            return get_peft_model(model, config)

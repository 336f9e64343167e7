"""The platform's `init=` entries on the linear teacher–student setting: name -> (B₀, A₀, base) at step 0.

    W_eff = base + B A,   D = W_eff − W0 (the adapter's effective update; D = 0 at step 0 for every init)
    default       B₀ = 0, A₀ ~ kaiming_uniform(a=√5) = U(±1/√d_in), base W0            (peft, init=default)
    pissa         B₀ A₀ = [W0]_r (balanced √S factors), base W0 − B₀A₀                  (peft, init=pissa)
    lora_fa       B₀ A₀ = c²·[−G]_r/σ₁, c = 1/√γ, base W0 − B₀A₀    (lorafa_factors, init=gradient, LoRA-One, offset)
    lora_fa_unit  the same with c = 1 (init.scale=unit)

peft's inits run for real: W0 sits in a one-layer module (nn.Linear without bias), wrapped through the platform's
`peft=lora` spec (r = lora_alpha = rank, so scaling = 1) and the init's own `lora_kwargs()`, `check` and `wrap`.
peft works in float32 here: its PiSSA refuses a float64 base (TypeError) and does its SVD in float32 for any
dtype, and its default A is drawn by a float32 nn.Linear before the cast to the base's dtype, so a float64 module
would give the same numbers. B₀, A₀ come back as float64 and the base W0 − B₀A₀ is recomputed in float64 from
them, so W_eff = W0 at step 0 to float64 rounding and the study trains in float64 from there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn

from lowrank_lab.adapters.init import Initializer, PeftBuiltinInit
from lowrank_lab.adapters.init.gradient import GradientInit, lorafa_factors
from lowrank_lab.adapters.lora import LoraSpec
from lowrank_lab.losses import kd_loss
from lowrank_lab.synthetic.setting import SyntheticSetting

STABLE_GAMMA = 128.0  # the seed's command line: init.scale=stable init.stable_gamma=128


class Factors(NamedTuple):
    """One init's start: B (d_out, r), A (r, d_in), base (d_out, d_in), all float64; base + B A = W0."""

    B: torch.Tensor
    A: torch.Tensor
    base: torch.Tensor


def peft_layer(init: Initializer, w0: torch.Tensor, rank: int, seed: int) -> nn.Module:
    """peft's LoRA layer on one float32 nn.Linear holding W0 (d_out, d_in), initialised by `init` with the torch
    RNG seeded by `seed` (the caller's RNG state is left as it was)."""
    d_out, d_in = w0.shape
    spec = LoraSpec(lora_r=rank, lora_alpha=rank, target_modules=["linear"])  # scaling = lora_alpha / r = 1
    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(d_in, d_out, bias=False)
        linear.weight.data = w0.to(torch.float32)
        model = nn.Sequential(OrderedDict(linear=linear))
        spec.check({"linear": linear}, init)
        init.check(spec, {"linear": linear})
        torch.manual_seed(seed)  # peft's default draws A from the global RNG
        init.wrap(model, spec.build(None, [], init.lora_kwargs()))  # peft swaps model.linear for its LoRA layer
    return model.linear


def through_peft(init: Initializer) -> Callable[[SyntheticSetting, int, int], Factors]:
    """A peft-built init (no data pass) as (setting, rank, seed) -> Factors."""

    def factors(setting: SyntheticSetting, rank: int, seed: int) -> Factors:
        layer = peft_layer(init, setting.w0, rank, seed)
        adapter = layer.active_adapters[0]
        B = layer.lora_B[adapter].weight.detach().double()  # (d_out, r)
        A = layer.lora_A[adapter].weight.detach().double()  # (r, d_in)
        moved = not torch.equal(layer.get_base_layer().weight, setting.w0.to(torch.float32))  # W ← W − s·B A
        base = setting.w0 - layer.scaling[adapter] * B @ A if moved else setting.w0
        return Factors(B, A, base)

    return factors


def loss_gradient(setting: SyntheticSetting) -> torch.Tensor:
    """G = ∇_W E‖y_T − W x‖² at W = W0, by autograd (d_out, d_in); equals −2 ΔW Σ."""
    w = setting.w0.clone().requires_grad_()
    loss = kd_loss(setting.x @ w.T, setting.y, regression=True) * w.shape[0]  # E‖·‖² (undo the mean over d_out)
    (grad,) = torch.autograd.grad(loss, w)
    return grad


def from_gradient(init: GradientInit) -> Callable[[SyntheticSetting, int, int], Factors]:
    """init=gradient's LoRA-FA / LoRA-One factors from the exact G of the setting (its data pass, in closed form):
    B A = c²·[−G]_r/σ₁ (c from init.scale), base W0 − B A when init.offset; unwhitened."""
    if init.whiten:
        raise ValueError("init.whiten=true is not modelled by the synthetic setting; use init.direction=LoRA-One.")

    def factors(setting: SyntheticSetting, rank: int, seed: int) -> Factors:
        B, A = lorafa_factors(loss_gradient(setting), rank, init.scale, scaling=1.0, stable_gamma=init.stable_gamma)
        return Factors(B, A, setting.w0 - B @ A if init.offset else setting.w0)

    return factors


INITS: dict[str, Callable[[SyntheticSetting, int, int], Factors]] = {
    "default": through_peft(Initializer()),  # conf/init/default.yaml
    "pissa": through_peft(PeftBuiltinInit("pissa")),  # conf/init/pissa.yaml
    "lora_fa": from_gradient(GradientInit("LoRA-One", "stable", STABLE_GAMMA, offset=True)),
    "lora_fa_unit": from_gradient(GradientInit("LoRA-One", "unit", STABLE_GAMMA, offset=True)),
}


def initial_factors(setting: SyntheticSetting, init: str, rank: int, seed: int) -> Factors:
    """(B₀ (d_out, r), A₀ (r, d_in), base (d_out, d_in)) of the init named `init`, from the INITS table."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not allowed; use one of {tuple(INITS)}.")
    return INITS[init](setting, rank, seed)

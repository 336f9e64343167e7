"""`init=gradient`: data-aware initialisation from the expected gradient of the task loss (LoRA-FA seed; LoRA-One;
LoRA-GA).

    G = E_x[∇_W L_task(x)] over init.bsz × init.iters training examples     (frozen base, no optimizer step)
    LoRA-FA:  [−G]_r^C = C^{-½} [C^{½}(−G)Σ^{½}]_r Σ^{-½}   (whiten: the rank-r step in the functional metric,
              C = E[JJᵀ] of the layer's output gradients, Σ = E[xxᵀ] of its inputs, both + reg_alpha·I, per token)
              = U_r S_r V_rᵀ,  B = c·U_r √(S_r/σ₁),  A = c·√(S_r/σ₁) V_rᵀ  ⇒  B·A = c²·[−G]_r^C / σ₁;  no base offset
    LoRA-One: the same without the metric: B·A = c²·[−G]_r / σ₁, the best rank-r approximation of the full
              fine-tuning step −η·G (one best rank-r gradient step); no base offset
    LoRA-GA:  ArB2r (A = V_{:r}ᵀ, B = U_{r:2r}), A2rBr, ArBr — peft's `lora_ga_init` (its B carries S, its scales);
              W ← W − s·B·A (s = scaling: the output is unchanged at step 0)

Each direction brings its own `whiten` / `offset` (`DIRECTION_DEFAULTS`, the seeds' and papers' choices; conf/init/
gradient.yaml resolves them from `init.directions` so the logged params say what ran); an explicit `init.whiten` /
`init.offset` wins for LoRA-FA / LoRA-One. `init.scale` gives c for LoRA-FA / LoRA-One as the seed code does:
`stable` 1/√γ (γ = `stable_gamma`), `gd` 1/s, `unit` 1, `weight_svd` mean_{i≤r} √(σᵢ(W)/s). The pass streams:
peft's `preprocess_loraga` keeps one accumulated gradient per target layer (+ C and Σ with whiten). Offsets are
reproduced on reload from `<adapter dir>/init_offset.safetensors` (B₀, A₀, s per layer) by
`lowrank_lab.adapters.load_adapter`.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from peft import LoraConfig, LoraGAConfig, get_peft_model
from peft.tuners.lora import preprocess_loraga
from peft.tuners.lora.loraga import get_target_modules
from peft.utils.other import transpose
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from lowrank_lab.adapters.init.base import INIT_SEED, Initializer
from lowrank_lab.cache import atomic_write, get_or_build
from lowrank_lab.errors import LabError, bad_value

DIRECTIONS = ("LoRA-FA", "LoRA-One", "ArB2r", "A2rBr", "ArBr")
OWN_SVD = ("LoRA-FA", "LoRA-One")  # B, A from our exact SVD of −G; the others are LoRA-GA's, through peft
# direction -> its whiten / offset when the config leaves them unset (conf/init/gradient.yaml's `directions`)
DIRECTION_DEFAULTS = {
    "LoRA-FA": {"whiten": True, "offset": False},  # the seed's reference: whitened, no base offset
    "LoRA-One": {"whiten": False, "offset": False},  # W + s·B₀A₀: one best rank-r step along −G
    **{ga: {"whiten": False, "offset": True} for ga in ("ArB2r", "A2rBr", "ArBr")},  # LoRA-GA: output unchanged
}
PEFT_SCALES = {"stable": "stable", "gd": "gd_scale", "unit": "unit", "weight_svd": "weight_svd"}
OFFSET_FILE = "init_offset.safetensors"
_OFFSET_ATTR = "init_offset"  # on the wrapped model: name -> (B₀, A₀, s, fan_in_fan_out) moved out of its base


def _roots(cov: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(M^½, M^{-½}) of a symmetric PSD (d, d) matrix through its eigendecomposition."""
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(eps)
    return (vecs * vals.sqrt()) @ vecs.T, (vecs * vals.rsqrt()) @ vecs.T


def lorafa_factors(
    grad: torch.Tensor,
    r: int,
    scale: str,
    scaling: float,
    stable_gamma: float,
    weight: torch.Tensor | None = None,
    metric: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad G (d_out, d_in) -> B (d_out, r), A (r, d_in) in float32 or better with B·A = c²·[−G]_r / σ₁ ([·]_r in
    the metric (C (d_out, d_out), Σ (d_in, d_in)) when given); `weight` W for weight_svd."""
    dtype = torch.promote_types(grad.dtype, torch.float32)
    step = -grad.to(dtype)  # the full fine-tuning step direction
    if metric is not None:
        (c_half, c_inv), (s_half, s_inv) = _roots(metric[0].to(dtype)), _roots(metric[1].to(dtype))
        U, S, Vh = torch.linalg.svd(c_half @ step @ s_half, full_matrices=False)
        step = c_inv @ (U[:, :r] * S[:r]) @ Vh[:r] @ s_inv
    U, S, Vh = torch.linalg.svd(step, full_matrices=False)  # exact: the subspace is the point
    if not S[0] > 0:
        raise LabError("init=gradient: a target layer got a zero gradient; is it on the task loss's path?")
    root = (S[:r] / S[0]).sqrt()  # balanced factors, top singular value of B·A normalised to 1
    if scale == "stable":
        c = stable_gamma**-0.5
    elif scale == "gd":
        c = 1.0 / scaling
    elif scale == "unit":
        c = 1.0
    elif scale == "weight_svd":
        c = float(torch.sqrt(torch.linalg.svdvals(weight.to(dtype))[:r] / scaling).mean())
    else:
        raise bad_value("init.scale", scale, f"one of {list(PEFT_SCALES)}")
    return c * U[:, :r] * root, c * root[:, None] * Vh[:r]


@torch.no_grad()
def subtract_offset(base: nn.Module, B: torch.Tensor, A: torch.Tensor, scaling: float, fan_in_fan_out: bool) -> None:
    """base.weight ← W − s·B·A in float32 or better, cast back (peft's LoRA-GA arithmetic; a reload redoes it
    bit for bit)."""
    dtype = torch.promote_types(base.weight.dtype, torch.float32)
    w = transpose(base.weight.data.to(dtype), fan_in_fan_out)
    w = w - scaling * (B.to(w.device, dtype) @ A.to(w.device, dtype))
    base.weight.data = transpose(w.to(base.weight.dtype), fan_in_fan_out).contiguous()


class GradientInit(Initializer):
    """LoRA-FA / LoRA-One / LoRA-GA init from the task-loss gradient over `bsz` × `iters` shuffled training
    examples; `whiten` / `offset` None: the direction's own (`DIRECTION_DEFAULTS`, or the config's `directions`)."""

    name = "gradient"
    needs_data = True

    def __init__(
        self,
        direction: str = "LoRA-FA",
        scale: str = "stable",
        stable_gamma: float = 128,
        bsz: int = 1,
        iters: int = 8,
        weight: str | None = None,
        whiten: bool | None = None,
        reg_alpha: float = 1e-6,
        offset: bool | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        directions: Mapping[str, Mapping[str, bool]] | None = None,
    ) -> None:
        scale = weight if weight is not None else scale  # the seed's Quick Start spells it init.weight
        if direction not in DIRECTIONS:
            raise bad_value("init.direction", direction, f"one of {list(DIRECTIONS)}")
        if scale not in PEFT_SCALES:
            raise bad_value("init.scale", scale, f"one of {list(PEFT_SCALES)}")
        if not stable_gamma > 0:
            raise bad_value("init.stable_gamma", stable_gamma, "a positive number (γ of the stable scale)")
        for key, value in (("init.bsz", bsz), ("init.iters", iters)):
            if not isinstance(value, int) or value < 1:
                raise bad_value(key, value, "a positive integer (the pass sees init.bsz × init.iters examples)")
        own = {**DIRECTION_DEFAULTS[direction], **dict((directions or {}).get(direction) or {})}
        whiten = own["whiten"] if whiten is None else whiten
        offset = own["offset"] if offset is None else offset
        if direction not in OWN_SVD and (whiten or not offset):  # peft's lora_ga_init always offsets, never whitens
            key, value = ("init.whiten", whiten) if whiten else ("init.offset", offset)
            raise bad_value(key, value, f"its default with init.direction={direction} (LoRA-GA: no whitening, offset)")
        if direction == "LoRA-One" and whiten:
            raise bad_value("init.whiten", whiten, "false with init.direction=LoRA-One (the whitened one is LoRA-FA)")
        self.direction, self.scale, self.stable_gamma = direction, scale, float(stable_gamma)
        self.bsz, self.iters, self.seed, self.cache_dir = bsz, iters, seed, cache_dir
        self.whiten, self.reg_alpha, self.offset = bool(whiten), float(reg_alpha), bool(offset)
        self.metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # base module name -> (C, Σ) with whiten

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": True}  # B = 0 at wrap; apply() writes B, A and the offset

    def check(self, spec: Any, layers: dict[str, nn.Module]) -> None:
        from transformers.pytorch_utils import Conv1D

        for name, module in layers.items():
            if not isinstance(module, (nn.Linear, Conv1D)):
                allowed = f"nn.Linear / Conv1D targets with init=gradient; {name!r} is {type(module).__name__}"
                raise bad_value("peft.target_modules", spec.target_modules, allowed)
        need = spec.lora_r if self.direction in OWN_SVD else 2 * spec.lora_r
        smallest = min(min(m.weight.shape) for m in layers.values())
        if need > smallest:
            allowed = f"r ≤ {smallest if need == spec.lora_r else smallest // 2} with init.direction={self.direction}"
            raise bad_value("peft.lora_r", spec.lora_r, allowed + f" (it takes {need} singular vectors per layer)")

    # ----- the gradient pass (before peft builds the layers) -------------------------------------------------
    def wrap(self, model: nn.Module, config: LoraConfig, datamodule: Any = None) -> nn.Module:
        batches = gradient_batches(self.require_data(datamodule), self.bsz, self.iters, self.seed, model)
        config.lora_ga_config = LoraGAConfig()  # preprocess_loraga requires one; init_lora_weights stays True
        path = None
        if self.cache_dir and not self.whiten:
            from lowrank_lab.adapters.init.calibration import cache_file, target_modules_key

            settings = {"bsz": self.bsz, "iters": self.iters, "seed": self.seed, "targets": target_modules_key(config)}
            path = cache_file(self.cache_dir, "gradient", model, batches, settings)
        targets = dict(get_target_modules(model, config))

        def train_step() -> None:  # peft runs this under enable_grad with only the target weights requiring grad
            mode = model.training
            model.eval()  # the expected gradient, without dropout noise
            stats = self.metrics if self.whiten else {}
            hooks = [_covariance_hooks(m, stats.setdefault(n, {})) for n, m in targets.items()] if self.whiten else []
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    for batch in batches:
                        model(**batch).loss.backward()  # .grad accumulates: one (d_out, d_in) buffer per target
            finally:
                model.train(mode)
                for handles in hooks:
                    for handle in handles:
                        handle.remove()

        def preprocess(cache: Path | None) -> None:  # G per target (`_peft_loraga_grad`), read from / saved to cache
            preprocess_loraga(model, config, train_step, cache_file=None if cache is None else str(cache))

        if path is None:
            preprocess(None)
        else:  # peft saves to a fresh temp file (empty: it runs the pass), renamed onto the cache file after
            get_or_build(path, lambda: atomic_write(path, preprocess), load=preprocess, what="LoRA-GA gradients")
        config.lora_ga_config = None
        return get_peft_model(model, config)

    # ----- B, A and the base offset (after wrapping) ---------------------------------------------------------
    @torch.no_grad()
    def apply(self, model: nn.Module, datamodule: Any = None, teacher: Any = None) -> None:
        from lowrank_lab.adapters.kasa import unit_diag_where_initialised
        from lowrank_lab.adapters.wrap import adapted_modules

        record: dict[str, tuple[torch.Tensor, torch.Tensor, float, bool]] = {}
        for name, layer in adapted_modules(model).items():
            adapter, base = layer.active_adapters[0], layer.get_base_layer()
            if not hasattr(base, "_peft_loraga_grad"):
                raise LabError(f"init=gradient: no gradient reached {name}; is it on the task loss's path?")
            scaling, fan = float(layer.scaling[adapter]), bool(getattr(layer, "fan_in_fan_out", False))
            if self.direction in OWN_SVD:
                grad = transpose(base._peft_loraga_grad, fan)  # (d_out, d_in)
                weight = transpose(base.weight, fan) if self.scale == "weight_svd" else None
                metric = self._metric(name) if self.whiten else None
                B, A = lorafa_factors(
                    grad, int(layer.r[adapter]), self.scale, scaling, self.stable_gamma, weight, metric
                )
                B, A = B.to(base.weight), A.to(base.weight)  # dtype and device of the base weight
                layer.lora_B[adapter].weight.data, layer.lora_A[adapter].weight.data = B.contiguous(), A.contiguous()
                if self.offset:
                    subtract_offset(base, B, A, scaling, fan)
                del base._peft_loraga_grad
            else:  # peft's LoRA-GA on the built layer (writes B, A and W − s·BA); its randomized SVD, seeded
                ga = LoraGAConfig(self.direction, PEFT_SCALES[self.scale], self.stable_gamma)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(INIT_SEED)
                    layer.lora_ga_init(adapter, ga)
            if self.offset:
                B0, A0 = layer.lora_B[adapter].weight, layer.lora_A[adapter].weight
                record[name] = (B0.detach().cpu().clone(), A0.detach().cpu().clone(), scaling, fan)
        self.metrics.clear()
        model.__dict__[_OFFSET_ATTR] = record
        unit_diag_where_initialised(model)

    def save(self, model: nn.Module, adapter_dir: Path) -> None:
        """The s·B₀A₀ this init moved out of the base, next to the adapter (`init_offset.safetensors`)."""
        save_init_offset(model, adapter_dir)

    @classmethod
    def before_reload(cls, base_model: nn.Module, config: Any, adapter_dir: Path) -> None:
        from peft import PeftModel

        if (Path(adapter_dir) / OFFSET_FILE).is_file() and isinstance(base_model, PeftModel):
            raise bad_value(
                "adapter path", str(adapter_dir), "loaded onto a plain base (its init moved s·B₀A₀ out of the base)"
            )

    @classmethod
    def after_reload(cls, model: nn.Module, adapter_dir: Path) -> None:
        """W ← W − s·B₀A₀ again from the offset file, when this init wrote one."""
        if (Path(adapter_dir) / OFFSET_FILE).is_file():
            apply_init_offset(model, adapter_dir)

    def _metric(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, Σ) of the adapted layer `name`: its base module's per-token averages + reg_alpha·I."""
        stats = next(v for k, v in self.metrics.items() if name == k or name.endswith("." + k))
        C, S = stats["C"] / stats["n"], stats["S"] / stats["n"]  # (d_out, d_out), (d_in, d_in)
        return C + self.reg_alpha * torch.eye(len(C)).to(C), S + self.reg_alpha * torch.eye(len(S)).to(S)


def _covariance_hooks(module: nn.Module, stats: dict[str, Any]) -> list[Any]:
    """Accumulate C += JᵀJ (output gradients, (d_out, d_out)) and Σ += XᵀX (inputs, (d_in, d_in)) over tokens."""

    def forward(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        stats["x"] = inputs[0].detach()

    def backward(mod: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
        d_out, d_in = transpose(mod.weight, not isinstance(mod, nn.Linear)).shape  # Conv1D stores (d_in, d_out)
        x = stats.pop("x").reshape(-1, d_in).float()  # (tokens, d_in)
        j = grad_output[0].detach().reshape(-1, d_out).float()  # (tokens, d_out)
        for key, rows in (("C", j), ("S", x)):
            stats[key] = stats.get(key, 0) + rows.T @ rows
        stats["n"] = stats.get("n", 0) + x.shape[0]

    return [module.register_forward_hook(forward), module.register_full_backward_hook(backward)]


def gradient_batches(datamodule: Any, bsz: int, iters: int, seed: int, model: nn.Module) -> list[dict]:
    """`iters` batches of `bsz` training examples, shuffled by a generator seeded with `seed` (the run's own
    random stream is not touched), on the model's device: (bsz, T) tensors."""
    loader = datamodule.train_dataloader()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    shuffled = DataLoader(loader.dataset, bsz, shuffle=True, generator=generator, collate_fn=loader.collate_fn)
    batches = [{k: v.to(device) for k, v in b.items()} for b in itertools.islice(shuffled, iters)]
    if not batches:
        raise bad_value("data", "train split", "at least one training example for init=gradient")
    return batches


# ----- the offset next to a saved adapter -----------------------------------------------------------------------
def save_init_offset(model: nn.Module, adapter_dir: str | Path) -> Path | None:
    """Write `<adapter_dir>/init_offset.safetensors` when an init moved s·B₀A₀ out of `model`'s base; else None."""
    record = getattr(model, _OFFSET_ATTR, None)
    if not record:
        return None
    tensors, meta = {}, {}
    for name, (B0, A0, scaling, fan) in record.items():
        tensors[f"{name}.lora_B0"], tensors[f"{name}.lora_A0"] = B0.contiguous(), A0.contiguous()
        meta[name] = {"scaling": scaling, "fan_in_fan_out": fan}
    path = Path(adapter_dir) / OFFSET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"layers": json.dumps(meta)})
    return path


def apply_init_offset(peft_model: nn.Module, adapter_dir: str | Path) -> None:
    """Redo W ← W − s·B₀A₀ on the freshly loaded `peft_model`'s base layers from the saved offset file."""
    path = Path(adapter_dir) / OFFSET_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["layers"])
    tensors = load_file(str(path))
    for name, info in meta.items():
        try:
            base = peft_model.get_submodule(name).get_base_layer()
        except AttributeError:
            raise bad_value("adapter path", str(adapter_dir), f"an adapter for this base (no layer {name})") from None
        B0, A0 = tensors[f"{name}.lora_B0"], tensors[f"{name}.lora_A0"]
        subtract_offset(base, B0, A0, float(info["scaling"]), bool(info["fan_in_fan_out"]))

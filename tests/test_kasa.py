"""KaSA through our wrapper and real peft, against the seed's semantics: SVD truncation, lora_diag, zero init,
ΔW = scaling·B·diag(d)·A, merge/unmerge, save/load on a fresh base, closed-form regulariser, gradients."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from peft import PeftModel
from safetensors.torch import load_file

from lowrank_lab.adapters import KasaSpec, LoraSpec, get_kasa_regularization_loss, load_adapter, wrap
from lowrank_lab.adapters.kasa import delta_weight, kasa_layers
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.models.backbone import Backbone

R, BETA, GAMMA = 4, 0.25, 0.5
SHAPES = [(16, 12), (12, 10)]  # (in, out) of the two adapted layers: k = 12 and 10


def base_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(*SHAPES[0]), nn.ReLU(), nn.Linear(*SHAPES[1]))


def kasa(model: nn.Module, r: int = R, alpha: float = 8.0) -> nn.Module:
    spec = KasaSpec(lora_r=r, lora_alpha=alpha, target_modules=["0", "2"], kasa={"beta": BETA, "gamma": GAMMA})
    return wrap(Backbone(model, "seq", "", "none", True), spec)


def layers(model: nn.Module) -> list[nn.Module]:
    return list(kasa_layers(model).values())


def randomise_adapter(model: nn.Module, seed: int = 1) -> None:
    """B ≠ 0 and a fresh lora_diag, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers(model):
            for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_diag["default"]):
                p.copy_(torch.randn(p.shape, generator=g))


def x_batch() -> torch.Tensor:
    return torch.randn(5, SHAPES[0][0], generator=torch.Generator().manual_seed(7))


def test_base_weight_is_the_svd_with_the_r_smallest_singular_values_zeroed() -> None:
    original = [m.weight.detach().double().clone() for m in base_model() if isinstance(m, nn.Linear)]
    model = kasa(base_model())
    for w0, layer in zip(original, layers(model)):
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        s_trunc = s.clone()
        s_trunc[-R:] = 0.0  # the r smallest
        expected = u @ torch.diag(s_trunc) @ vh
        got = layer.get_base_layer().weight.double()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        s_got = torch.linalg.svdvals(got)
        torch.testing.assert_close(s_got[:-R], s[:-R], atol=1e-5, rtol=0)  # principal values kept
        assert float(s_got[-R:].max()) < 1e-5  # exactly r dropped


def test_shapes_and_trainable_parameters() -> None:
    model = kasa(base_model())
    for (d_in, d_out), layer in zip(SHAPES, layers(model)):
        assert layer.lora_diag["default"].shape == (R,) and layer.lora_diag["default"].requires_grad
        assert layer.lora_A["default"].weight.shape == (R, d_in) and layer.lora_B["default"].weight.shape == (d_out, R)
        assert not layer.get_base_layer().weight.requires_grad
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 3 * len(SHAPES)  # lora_A, lora_B, lora_diag per layer; nothing else
    assert all(any(key in n for key in ("lora_A", "lora_B", "lora_diag")) for n in trainable)


def test_b_is_zero_so_the_initial_update_is_zero() -> None:
    model = kasa(base_model())
    for layer in layers(model):
        assert not layer.lora_B["default"].weight.any()
        assert not delta_weight(layer).any()
    truncated = copy.deepcopy(model.get_base_model())
    x = x_batch()
    with torch.no_grad(), model.disable_adapter():
        base_out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base_out)
        torch.testing.assert_close(model(x), truncated(x))


def test_delta_weight_is_scaling_b_diag_a_and_the_forward_uses_it() -> None:
    model = kasa(base_model(), alpha=6.0)
    randomise_adapter(model)
    layer = layers(model)[0]
    a, b, d = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_diag["default"]
    scaling = 6.0 / R
    assert layer.scaling["default"] == pytest.approx(scaling)
    expected = scaling * b @ torch.diag(d) @ a  # ΔW = scaling · B · diag(ΔΣ) · A
    torch.testing.assert_close(delta_weight(layer), expected, atol=1e-5, rtol=1e-5)
    x = x_batch()
    base = layer.get_base_layer()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ (base.weight + expected).T + base.bias, atol=1e-5, rtol=1e-5)


def test_merge_unmerge_round_trip_returns_to_the_truncated_base() -> None:
    model = kasa(base_model())
    randomise_adapter(model)
    truncated = [layer.get_base_layer().weight.detach().clone() for layer in layers(model)]
    x = x_batch()
    with torch.no_grad():
        before = model(x)
        model.merge_adapter()
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
        for w, layer in zip(truncated, layers(model)):
            torch.testing.assert_close(layer.get_base_layer().weight, w + delta_weight(layer))
        model.unmerge_adapter()
        for w, layer in zip(truncated, layers(model)):
            torch.testing.assert_close(layer.get_base_layer().weight, w, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loader", ["peft", "ours"])
def test_save_load_with_lora_diag_on_a_fresh_base(tmp_path: Path, loader: str) -> None:
    model = kasa(base_model())
    randomise_adapter(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sum("lora_diag" in k for k in saved) == 2
    fresh = base_model()  # the original, untruncated weights
    load = PeftModel.from_pretrained if loader == "peft" else load_adapter
    reloaded = load(fresh, str(tmp_path))
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=1e-6, rtol=0)
    for a, b in zip(layers(model), layers(reloaded)):  # the base is re-truncated, the same way
        torch.testing.assert_close(a.get_base_layer().weight, b.get_base_layer().weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.lora_diag["default"], b.lora_diag["default"])


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=torch.Generator().manual_seed(seed)))
    return q if rows >= cols else q.T  # orthonormal columns (tall) or rows (wide)


def test_regulariser_closed_form() -> None:
    model = kasa(base_model())
    with torch.no_grad():
        for i, layer in enumerate(layers(model)):
            d_out, d_in = layer.get_base_layer().weight.shape
            layer.lora_A["default"].weight.copy_(orthonormal(R, d_in, i))  # AAᵀ = I
            layer.lora_B["default"].weight.copy_(orthonormal(d_out, R, 10 + i))  # BᵀB = I
            layer.lora_diag["default"].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # ‖ΔΣ‖² = 30
    assert float(get_kasa_regularization_loss(model)) == pytest.approx(2 * BETA * 30.0, abs=1e-5)
    with torch.no_grad():
        for layer in layers(model):
            layer.lora_A["default"].weight.mul_(2.0)  # AAᵀ − I = 3I: ‖·‖_F = 3√r
            layer.lora_B["default"].weight.zero_()  # BᵀB − I = −I: ‖·‖_F = √r
            layer.lora_diag["default"].zero_()
    expected = 2 * GAMMA * (3 * math.sqrt(R) + math.sqrt(R))
    assert float(get_kasa_regularization_loss(model)) == pytest.approx(expected, abs=1e-5)


def test_gradients_reach_a_b_and_lora_diag() -> None:
    model = kasa(base_model())  # step 0: B = 0, so A and ΔΣ get their first gradient from the regulariser
    for randomised in (False, True):
        if randomised:
            randomise_adapter(model)
        model.zero_grad()
        loss = model(x_batch()).pow(2).mean() + get_kasa_regularization_loss(model)
        loss.backward()
        for layer in layers(model):
            for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_diag["default"]):
                assert p.grad is not None and p.grad.abs().sum() > 0


def test_every_method_adds_the_regulariser_through_the_base_module() -> None:
    task = TaskSpec(name="sst2", num_labels=2, metric="accuracy", metrics=("accuracy",))
    module = partial(FinetuneModule, task=task, optimizer=partial(torch.optim.AdamW))
    lora = wrap(Backbone(base_model(), "seq", "", "none", True), LoraSpec(lora_r=R, target_modules=["0", "2"]))
    assert get_kasa_regularization_loss(lora) is None and module(student=lora).regularizers() == {}
    student = kasa(base_model())
    terms = module(student=student).regularizers()
    assert set(terms) == {"kasa_reg"} and terms["kasa_reg"].requires_grad
    torch.testing.assert_close(terms["kasa_reg"], student.base_model._get_kasa_loss())


def test_beta_gamma_from_the_config() -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    overrides = ["peft=kasa", "peft.kasa.beta=0.5", "peft.kasa.gamma=0.125", "peft.lora_r=4", "peft.use_rslora=true"]
    cfg = compose_config(*overrides)
    spec = instantiate(cfg.peft)
    config = spec.build("seq_cls", ["query", "value"], {"init_lora_weights": True})
    assert (config.kasa_config.beta, config.kasa_config.gamma) == (0.5, 0.125)
    assert config.r == 4 and config.lora_alpha == 4 and config.use_rslora and not config.use_dora

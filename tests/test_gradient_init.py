"""`init=gradient` (LoRA-FA seed, LoRA-One, LoRA-GA): on a linear model LoRA-One's B·A is the top-r SVD of the
closed-form gradient and LoRA-FA's the whitened step computed here with scipy's matrix square roots; each direction
composes with its own whiten / offset; on the tiny BERT the output is unchanged at step 0 with an offset (rsLoRA
too), the offset is redone on reload, and bad settings fail with one line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from peft import LoraConfig
from torch.utils.data import DataLoader

from lowrank_lab.adapters import adapted_modules, load_adapter
from lowrank_lab.adapters.init.gradient import DIRECTION_DEFAULTS, OFFSET_FILE, GradientInit, save_init_offset
from lowrank_lab.errors import LabError
from lowrank_lab.spectral import principal_angles
from tests.test_inits import base_logits, build, datamodule, init_cfg, logits, original_weight  # noqa: F401

D_IN, D_OUT, N, R = 10, 7, 24, 3


class Linear(nn.Module):
    """y = W x with L = mean_n ½‖W x_n − y_n‖², so ∇_W L = (W X − Y)ᵀ X / n in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D_IN, D_OUT, bias=False, dtype=torch.float64)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=0.5 * (self.proj(x) - labels).square().sum(-1).mean())


def linear_problem() -> tuple[Linear, torch.Tensor, torch.Tensor, SimpleNamespace]:
    torch.manual_seed(0)
    model, g = Linear(), torch.Generator().manual_seed(1)
    x = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=g, dtype=torch.float64)
    rows = [{"x": x[i], "labels": y[i]} for i in range(N)]
    loader = DataLoader(rows, batch_size=4, collate_fn=torch.utils.data.default_collate)
    return model, x, y, SimpleNamespace(train_dataloader=lambda: loader)


def init_linear(direction: str, scale: str = "unit", rslora: bool = False, alpha: float = 6.0, **kw):
    """(model, W₀, closed-form G) after init=gradient over all N examples (bsz × iters = N)."""
    model, x, y, dm = linear_problem()
    w0 = model.proj.weight.detach().clone()
    grad = (x @ w0.T - y).T @ x / N  # (d_out, d_in): ∇_W mean_n ½‖W x_n − y_n‖²
    init = GradientInit(direction=direction, scale=scale, bsz=4, iters=N // 4, cache_dir=None, **kw)
    config = LoraConfig(r=R, lora_alpha=alpha, target_modules=["proj"], use_rslora=rslora)
    peft_model = init.wrap(model, config, dm)
    init.apply(peft_model, datamodule=dm)
    return peft_model, w0, grad


def lora_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float, nn.Module]:
    (layer,) = adapted_modules(model).values()
    b, a = layer.lora_B["default"].weight.detach(), layer.lora_A["default"].weight.detach()
    return b, a, float(layer.scaling["default"]), layer


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_lora_one_ba_is_the_top_r_svd_of_the_analytic_gradient(rslora: bool) -> None:
    model, w0, grad = init_linear("LoRA-One", scale="unit", rslora=rslora, offset=True)
    b, a, scaling, layer = lora_of(model)
    assert scaling == pytest.approx(6.0 / R**0.5 if rslora else 6.0 / R)
    u, s, vh = torch.linalg.svd(-grad, full_matrices=False)  # independent reference: the full fine-tuning step
    best = (u[:, :R] * s[:R]) @ vh[:R]  # [−G]_r, the best rank-r approximation of −G
    torch.testing.assert_close(b @ a, best / s[0], atol=1e-10, rtol=1e-8)  # unit: B·A = [−G]_r / σ₁
    assert principal_angles(b, u[:, :R]).max() < 1e-6 and principal_angles(a.T, vh[:R].T).max() < 1e-6
    torch.testing.assert_close(b.T @ b, a @ a.T, atol=1e-10, rtol=1e-8)  # balanced factors
    torch.testing.assert_close(layer.get_base_layer().weight + scaling * b @ a, w0, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scale,c2", [("stable", 1 / 128), ("gd", None), ("unit", 1.0), ("weight_svd", None)])
def test_lora_one_scales(scale: str, c2: float | None) -> None:
    model, w0, grad = init_linear("LoRA-One", scale=scale, stable_gamma=128)
    b, a, scaling, _ = lora_of(model)
    if scale == "gd":
        c2 = scaling**-2
    if scale == "weight_svd":
        c2 = float(torch.sqrt(torch.linalg.svdvals(w0)[:R] / scaling).mean()) ** 2
    u, s, vh = torch.linalg.svd(-grad, full_matrices=False)
    torch.testing.assert_close(b @ a, c2 * (u[:, :R] * s[:R]) @ vh[:R] / s[0], atol=1e-10, rtol=1e-6)


@pytest.mark.parametrize("direction", ["ArB2r", "A2rBr", "ArBr"])
def test_loraga_directions_through_peft(direction: str) -> None:
    model, w0, grad = init_linear(direction, scale="unit")
    b, a, scaling, layer = lora_of(model)
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    rows_a, cols_b = {"ArB2r": (0, R), "A2rBr": (R, 0), "ArBr": (1, 0)}[direction]
    step = 2 if direction == "ArBr" else 1
    want_a, want_b = vh[rows_a : rows_a + step * R : step], u[:, cols_b : cols_b + step * R : step]
    assert principal_angles(a.T, want_a.T).max() < 1e-4 and principal_angles(b, want_b).max() < 1e-4
    torch.testing.assert_close(layer.get_base_layer().weight + scaling * b @ a, w0, atol=1e-6, rtol=0)


# ----- the tiny BERT through our wrapper: output preserved at step 0, offset redone on reload --------------------
GRAD = ["init=gradient", "init.bsz=4", "init.iters=2", "init.cache_dir=null"]


@pytest.mark.parametrize(
    "extra",
    [
        ["init.direction=LoRA-FA", "init.offset=true", "peft=qv", "peft.use_rslora=true"],
        ["init.direction=ArB2r", "init.scale=stable"],
    ],
    ids=["lorafa-qv-rslora", "ArB2r"],
)
def test_output_unchanged_and_reload(tmp_path: Path, datamodule, extra: list[str]) -> None:  # noqa: F811
    from hydra.utils import instantiate

    cfg = init_cfg(tmp_path, *GRAD, *extra)
    model, original, batch = build(cfg, datamodule)
    before = base_logits(cfg, original, batch)
    after = logits(model, batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)  # logits at step 0 = the base's
    for name, layer in adapted_modules(model).items():
        b, a, s = layer.lora_B["default"].weight, layer.lora_A["default"].weight, layer.scaling["default"]
        assert b.abs().sum() > 0 and a.abs().sum() > 0
        torch.testing.assert_close(layer.get_base_layer().weight + s * b @ a, original_weight(name, original))
    with torch.no_grad():  # a "trained" adapter: the reload must redo W − s·B₀A₀ and load the new B, A
        for layer in adapted_modules(model).values():
            layer.lora_B["default"].weight.mul_(1.5).add_(0.01)
    trained = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    assert save_init_offset(model, tmp_path / "adapter") == tmp_path / "adapter" / OFFSET_FILE
    fresh = instantiate(cfg.model, num_labels=2).model
    fresh.load_state_dict(original)
    reloaded = load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, batch), trained, atol=1e-5, rtol=0)


BAD = [
    ({"direction": "LoRA-XX"}, "init.direction='LoRA-XX'"),
    ({"scale": "huge"}, "init.scale='huge'"),
    ({"stable_gamma": 0}, "init.stable_gamma=0"),
    ({"bsz": 0}, "init.bsz=0"),
    ({"iters": 1.5}, "init.iters=1.5"),
    ({"direction": "ArBr", "whiten": True}, "init.whiten=True"),
    ({"direction": "ArB2r", "offset": False}, "init.offset=False"),
    ({"direction": "LoRA-One", "whiten": True}, "init.whiten=True"),
]


@pytest.mark.parametrize("kw,needle", BAD, ids=[n for _, n in BAD])
def test_bad_settings_fail_with_one_line(kw: dict, needle: str) -> None:
    with pytest.raises(LabError, match=needle.replace(".", r"\.").replace("(", r"\(")) as err:
        GradientInit(**kw)
    assert "\n" not in str(err.value)


def test_rank_too_large_for_loraga_fails_with_one_line() -> None:
    model, _, _, dm = linear_problem()
    spec = SimpleNamespace(lora_r=4, target_modules=["proj"])
    GradientInit(direction="LoRA-FA").check(spec, {"proj": model.proj})  # r ≤ 7
    with pytest.raises(LabError, match=r"peft\.lora_r=4: r ≤ 3 with init\.direction=ArB2r"):
        GradientInit(direction="ArB2r").check(spec, {"proj": model.proj})  # 2r > 7


# ----- each direction's own whiten / offset; LoRA-FA's whitened step against scipy -------------------------------
@pytest.mark.parametrize(
    "overrides, whiten, offset",
    [
        (["init=gradient"], True, False),  # the seed's LoRA-FA: whitened, no base offset
        (["init=gradient", "init.direction=LoRA-FA"], True, False),
        (["init=gradient", "init.direction=LoRA-One"], False, False),
        (["init=gradient", "init.direction=ArB2r"], False, True),
        (["init=loraga"], False, True),  # LoRA-GA keeps its offset
        (["init=gradient", "init.whiten=false"], False, False),  # an explicit value wins
    ],
)
def test_each_direction_composes_with_its_own_whiten_and_offset(tmp_path: Path, overrides, whiten, offset) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = init_cfg(tmp_path, *overrides)
    resolved = OmegaConf.to_container(cfg.init, resolve=True)  # what the job logs as init.* params
    assert (resolved["whiten"], resolved["offset"]) == (whiten, offset)
    init = instantiate(cfg.init)
    assert (init.whiten, init.offset) == (whiten, offset)
    table = {k: dict(v) for k, v in resolved["directions"].items()}
    assert table == DIRECTION_DEFAULTS  # the yaml's table is the code's
    assert (GradientInit(direction=init.direction).whiten, GradientInit(direction=init.direction).offset) == (
        DIRECTION_DEFAULTS[init.direction]["whiten"],
        DIRECTION_DEFAULTS[init.direction]["offset"],
    )


def test_lorafa_whitened_step_matches_scipy_matrix_square_roots() -> None:
    """B·A = C^{-½}[C^{½}(−G)Σ^{½}]_r Σ^{-½} / σ₁ with C, Σ, G written out for y = W x, L = mean ½‖Wx − y‖²."""
    from scipy.linalg import inv, sqrtm, svd

    reg = 1e-3
    model, w0, grad = init_linear("LoRA-FA", scale="unit", reg_alpha=reg)  # whiten=True, offset=False: its own
    b, a, _, layer = lora_of(model)
    _, x, y, _ = linear_problem()
    x, y, w = x.numpy(), y.numpy(), w0.numpy()
    j = (x @ w.T - y) / 4  # ∂(batch mean loss)/∂(output) per example: batches of bsz = 4
    C = j.T @ j / N + reg * np.eye(D_OUT)  # E[JJᵀ] over the N examples (one token each) + reg·I
    S = x.T @ x / N + reg * np.eye(D_IN)  # E[xxᵀ] + reg·I
    G = grad.numpy()  # the closed-form mean gradient
    c_half, s_half = np.real(sqrtm(C)), np.real(sqrtm(S))
    u, s, vh = svd(c_half @ (-G) @ s_half, full_matrices=False)
    step = inv(c_half) @ (u[:, :R] * s[:R]) @ vh[:R] @ inv(s_half)  # the rank-r step in the functional metric
    want = step / np.linalg.svd(step, compute_uv=False)[0]  # unit scale: top singular value 1
    np.testing.assert_allclose((b @ a).numpy(), want, atol=1e-8, rtol=1e-6)
    unwhitened = np.linalg.svd(-G)
    plain = (unwhitened[0][:, :R] * unwhitened[1][:R]) @ unwhitened[2][:R] / unwhitened[1][0]
    assert np.abs(want - plain).max() > 1e-2  # the metric changes the step: this checks the whitened route
    torch.testing.assert_close(layer.get_base_layer().weight, w0, atol=0, rtol=0)  # no base offset

"""Each `init=` entry keeps its promise on the tiny BERT through our wrapper and real peft: PiSSA/OLoRA/CorDA
move scaling·BA out of the base (base + scaling·BA = W), OLoRA's B is orthonormal, orthogonal and EVA start
with BA = 0, the output is unchanged at step 0; data inits cache their pass and reload to equal logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate
from peft import PeftModel

from lowrank_lab.adapters import adapted_modules, load_adapter, wrap
from lowrank_lab.errors import LabError
from tests.conftest import REPO, compose_config

R = 4


def init_cfg(out: Path, *overrides: str):
    """The repo's config on the tiny BERT, 64 short SST-2 rows and rank R, with its init cache under `out`."""
    small_pass = {"init=corda": "init.num_samples=16", "init=eva": "init.num_batches=4"}
    return compose_config(
        "model=tiny-bert",
        f"paths.output_dir={out}",  # the init cache goes to <out>/init_cache
        f"paths.data_dir={REPO / 'outputs' / 'data'}",
        "data.train_limit=64",
        "data.batch_size=16",
        "data.max_length=32",
        f"peft.lora_r={R}",
        "peft.lora_alpha=8",  # scaling 2: the residual checks see scaling·BA, not BA
        *overrides,
        *[small_pass[o] for o in overrides if o in small_pass],
    )


@pytest.fixture(scope="module")
def datamodule(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    dm = instantiate(init_cfg(tmp_path_factory.mktemp("dm")).data)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One outputs dir for the module: CorDA/EVA passes are computed once and read from its cache after."""
    return tmp_path_factory.mktemp("outputs")


def build(cfg, datamodule) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(wrapped and initialised model, original base state, a batch); the step-0 logits are checked by callers."""
    torch.manual_seed(0)
    backbone = instantiate(cfg.model, num_labels=2)
    original = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    init = instantiate(cfg.init)
    model = wrap(backbone, instantiate(cfg.peft), init, datamodule=datamodule)
    init.apply(model, datamodule=datamodule)
    return model, original, next(iter(datamodule.val_dataloader()))


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def base_logits(cfg, original: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    fresh = instantiate(cfg.model, num_labels=2).model
    fresh.load_state_dict(original)
    return logits(fresh, batch)


def factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    return layer.lora_B["default"].weight.detach(), layer.lora_A["default"].weight.detach(), layer.scaling["default"]


def original_weight(name: str, original: dict[str, torch.Tensor]) -> torch.Tensor:
    return original[name.removeprefix("base_model.model.") + ".weight"]


CASES = [("lora", i) for i in ("default", "pissa", "olora", "orthogonal", "corda", "eva")]
CASES += [("dora", "pissa"), ("dora", "corda"), ("kasa", "pissa"), ("lora", "pissa init.niter=4")]


@pytest.mark.parametrize("peft,init", CASES, ids=[f"{p}-{i}" for p, i in CASES])
def test_output_unchanged_at_step_0(shared: Path, datamodule, peft: str, init: str) -> None:
    name, *extra = init.split()
    cfg = init_cfg(shared, f"peft={peft}", f"init={name}", *extra)
    model, original, batch = build(cfg, datamodule)
    torch.testing.assert_close(logits(model, batch), base_logits(cfg, original, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["pissa", "olora", "corda", "pissa init.niter=4"])
def test_base_plus_scaled_ba_is_the_original_weight(shared: Path, datamodule, init: str) -> None:
    name, *extra = init.split()
    model, original, _ = build(init_cfg(shared, f"init={name}", *extra), datamodule)
    for layer_name, layer in adapted_modules(model).items():
        b, a, scaling = factors(layer)
        assert b.any() and a.any()
        w0 = original_weight(layer_name, original)
        torch.testing.assert_close(layer.get_base_layer().weight + scaling * b @ a, w0, atol=1e-5, rtol=0)
        if name == "pissa" and not extra:  # scaling·BA is the rank-r principal part of W
            u, s, vh = torch.linalg.svd(w0.double(), full_matrices=False)
            principal = (u[:, :R] * s[:R]) @ vh[:R]
            torch.testing.assert_close((scaling * b @ a).double(), principal, atol=1e-5, rtol=0)
        if name == "olora":  # B = Q_r orthonormal, A = R_r upper-trapezoidal
            torch.testing.assert_close(b.T @ b, torch.eye(R), atol=1e-5, rtol=0)
            torch.testing.assert_close(a, torch.triu(a), atol=0, rtol=0)


def test_kasa_keeps_the_factor_init_promise_with_unit_diag(shared: Path, datamodule) -> None:
    model, original, _ = build(init_cfg(shared, "peft=kasa", "init=pissa"), datamodule)
    for layer_name, layer in adapted_modules(model).items():
        b, a, scaling = factors(layer)
        diag = layer.lora_diag["default"].detach()
        torch.testing.assert_close(diag, torch.ones(R))
        w0 = original_weight(layer_name, original)
        torch.testing.assert_close(layer.get_base_layer().weight + scaling * (b * diag) @ a, w0, atol=1e-5, rtol=0)


def test_orthogonal_factors_are_nonzero_with_zero_product(shared: Path, datamodule) -> None:
    model, _, _ = build(init_cfg(shared, "init=orthogonal"), datamodule)
    for layer in adapted_modules(model).values():
        b, a, _ = factors(layer)
        assert b.abs().sum() > 0 and a.abs().sum() > 0
        torch.testing.assert_close(b @ a, torch.zeros(b.shape[0], a.shape[1]), atol=1e-6, rtol=0)


def test_default_and_eva_start_from_b_zero(shared: Path, datamodule) -> None:
    for init in ("default", "eva"):
        model, _, _ = build(init_cfg(shared, f"init={init}"), datamodule)
        ranks = []
        for layer in adapted_modules(model).values():
            b, a, _ = factors(layer)
            assert not b.any()
            ranks.append(a.shape[0])
            if init == "eva":  # A = top right-singular vectors of the layer inputs: orthonormal rows
                torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), atol=1e-4, rtol=0)
        assert sum(ranks) == R * len(ranks)  # EVA redistributes the rank budget, it does not grow it


@pytest.mark.parametrize("init", ["corda", "eva"])
def test_data_inits_cache_their_pass_and_reload_to_equal_logits(tmp_path: Path, datamodule, init: str) -> None:
    cfg = init_cfg(tmp_path, f"init={init}")
    model, original, batch = build(cfg, datamodule)
    cached = [p for p in (tmp_path / "init_cache").glob(f"{init}-*") if p.suffix != ".lock"]  # built under a lock
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns

    forwards = []  # a second build with the same model + data + rank reads the cache: no forward pass
    handle = nn.modules.module.register_module_forward_pre_hook(lambda module, args: forwards.append(module))
    try:
        again, _, _ = build(cfg, datamodule)
    finally:
        handle.remove()
    assert forwards == [] and cached[0].stat().st_mtime_ns == stamp
    for (n1, l1), (_, l2) in zip(adapted_modules(model).items(), adapted_modules(again).items()):
        torch.testing.assert_close(factors(l1)[1], factors(l2)[1], msg=n1)

    with torch.no_grad():  # as after training
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    fresh = instantiate(cfg.model, num_labels=2).model
    fresh.load_state_dict(original)
    torch.testing.assert_close(logits(load_adapter(fresh, tmp_path / "adapter"), batch), expected, atol=1e-5, rtol=0)


def test_pissa_niter_reloads_exactly_through_our_loader(tmp_path: Path, datamodule) -> None:
    cfg = init_cfg(tmp_path, "init=pissa", "init.niter=2")
    model, original, batch = build(cfg, datamodule)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    fresh = instantiate(cfg.model, num_labels=2).model
    fresh.load_state_dict(original)
    torch.manual_seed(123)  # whatever the caller's RNG state: the randomized SVD runs under the init's own seed
    torch.testing.assert_close(logits(load_adapter(fresh, tmp_path / "adapter"), batch), expected, atol=1e-6, rtol=0)


def test_peft_reloads_pissa_and_olora_on_a_fresh_base(tmp_path: Path, datamodule) -> None:
    for init in ("pissa", "olora"):
        cfg = init_cfg(tmp_path, f"init={init}")
        model, original, batch = build(cfg, datamodule)
        expected = logits(model, batch)
        model.save_pretrained(tmp_path / init)
        fresh = instantiate(cfg.model, num_labels=2).model
        fresh.load_state_dict(original)
        got = logits(PeftModel.from_pretrained(fresh, str(tmp_path / init)), batch)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_apply_without_data_fails_with_one_line(tmp_path: Path, datamodule) -> None:
    cfg = init_cfg(tmp_path, "init=eva")
    model, _, _ = build(init_cfg(tmp_path), datamodule)
    with pytest.raises(LabError, match="init='eva': a datamodule"):
        instantiate(cfg.init).apply(model, datamodule=None)

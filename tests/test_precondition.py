"""`optim=`: the Riemannian-preconditioned step equals its closed form (by hand, through a closure, through
Lightning), any method's optimizer can be wrapped, and peft's frozen-A LoRA-FA optimizer is reachable."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import DataLoader

from lowrank_lab.errors import LabError
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.optim import FrozenAOptim, OptimSpec, lora_pairs, precondition_grads, preconditioned
from tests.conftest import REPO, compose_config
from tests.test_kd import batch, lora, task, tiny_bert

REG = 1e-3  # large enough that a wrong λ shows at float64 precision


class Regressor(nn.Module):
    """y = W x with loss mean‖y − target‖²: small enough for closed forms."""

    def __init__(self, d_in: int = 6, d_out: int = 5) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False, dtype=torch.float64)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.proj(x) - labels).square().sum(-1).mean()


def lora_regressor(r: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = get_peft_model(Regressor(), LoraConfig(r=r, lora_alpha=r, target_modules=["proj"]))
    with torch.no_grad():  # B ≠ 0 so both preconditioners matter
        for _, b in lora_pairs(model):
            b.normal_()
    return model


def data(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 5, generator=g, dtype=torch.float64)


def closed_form(a: torch.Tensor, b: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor, lr: float, reg: float):
    """A − η(BᵀB + λI)⁻¹g_A, B − η g_B(AAᵀ + λI)⁻¹ with explicit inverses."""
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return a - lr * torch.inverse(b.T @ b + reg * eye) @ ga, b - lr * gb @ torch.inverse(a @ a.T + reg * eye)


def test_precondition_grads_is_the_closed_form() -> None:
    model = lora_regressor()
    model(*data()).backward()
    ((a, b),) = lora_pairs(model)
    A, B, ga, gb = a.detach().clone(), b.detach().clone(), a.grad.clone(), b.grad.clone()
    precondition_grads(lora_pairs(model), REG)
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    torch.testing.assert_close(a.grad, torch.inverse(B.T @ B + REG * eye) @ ga, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, gb @ torch.inverse(A @ A.T + REG * eye), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_closure", [False, True])
def test_preconditioned_sgd_step_is_the_closed_form(with_closure: bool) -> None:
    model, (x, y), lr = lora_regressor(), data(), 0.1
    ((a, b),) = lora_pairs(model)
    opt = preconditioned(torch.optim.SGD([a, b], lr=lr), lora_pairs(model), REG)
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "SGD" and opt.preconditioned
    model(x, y).backward()
    expect = closed_form(a.detach().clone(), b.detach().clone(), a.grad.clone(), b.grad.clone(), lr, REG)
    if with_closure:  # Lightning's way: the closure (zero_grad, forward, backward) runs inside step
        opt.zero_grad()
        opt.step(lambda: model(x, y).backward())
    else:
        opt.step()
    torch.testing.assert_close(a.detach(), expect[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.detach(), expect[1], rtol=1e-10, atol=1e-12)


class RawGrads(L.Callback):
    """Copies the Euclidean gradients Lightning hands to the optimizer (before our preconditioning)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {id(p): p.grad.clone() for p in pl_module.parameters() if p.grad is not None}


def test_optim_spec_preconditions_a_lightning_step() -> None:
    torch.manual_seed(0)
    model, lr = lora(tiny_bert()), 0.05
    module = FinetuneModule(model, task(), optimizer=partial(torch.optim.SGD, lr=lr))
    OptimSpec(precondition=True, prec_reg=REG).attach(module)
    pairs = lora_pairs(model)
    with torch.no_grad():
        for _, b in pairs:
            b.normal_()  # peft's B = 0 leaves A's step 0 either way
    before = [(a.detach().clone(), b.detach().clone()) for a, b in pairs]
    raw = RawGrads()
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[raw],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch()], batch_size=None))  # one ready batch
    assert getattr(trainer.optimizers[0], "preconditioned", False)
    for (a, b), (a0, b0) in zip(pairs, before):
        expect_a, expect_b = closed_form(a0, b0, raw.grads[id(a)], raw.grads[id(b)], lr, REG)
        torch.testing.assert_close(a.detach(), expect_a, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.detach(), expect_b, rtol=1e-4, atol=1e-6)


def test_frozen_a_is_peft_lorafa_optimizer() -> None:
    from peft.optimizers.lorafa import LoraFAOptimizer

    torch.manual_seed(0)
    model = lora(tiny_bert())
    extra = nn.Linear(3, 3)  # a method's own trainable map outside the student
    module = FinetuneModule(model, task(), optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0))
    module.extra = extra
    FrozenAOptim().attach(module)
    opt = module.optimizer_factory(params=module.trainable_parameters())
    assert isinstance(opt, LoraFAOptimizer) and opt.param_groups[0]["lr"] == 1e-2
    assert any(extra.weight is p for g in opt.param_groups for p in g["params"])
    a, b = lora_pairs(model)[0]
    assert not a.requires_grad and b.requires_grad
    a0, b0 = a.detach().clone(), b.detach().clone()
    module.training_step(batch(), 0).backward()
    opt.step()
    assert torch.equal(a, a0) and not torch.equal(b, b0)


def test_bad_optim_settings_are_one_line_errors() -> None:
    with pytest.raises(LabError, match="optim.prec_reg"):
        OptimSpec(prec_reg=-1.0)
    with pytest.raises(LabError, match="optim.precondition"):
        FrozenAOptim(precondition=True)
    full = FinetuneModule(tiny_bert(), task(), optimizer=partial(torch.optim.SGD, lr=0.1))  # peft=none
    with pytest.raises(LabError, match="optim.precondition"):
        OptimSpec(precondition=True).attach(full)


@pytest.mark.parametrize("entry", sorted(p.stem for p in (REPO / "conf" / "optim").glob("*.yaml")))
def test_optim_entries_compose(entry: str) -> None:
    cfg = compose_config(f"optim={entry}")
    assert isinstance(instantiate(cfg.optim), OptimSpec) and cfg.save.merged is False

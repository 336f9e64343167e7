"""method=sad: targets as buffers, the step-0 rule, L_align / L_coeff in the objective, α schedules, the spectral
metrics; tiny in-process BERTs with a synthetic 'fine-tuned' teacher."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lowrank_lab.losses import AdaptiveSchedule, CosineDecay, LinearWarmup, grassmann_alignment
from lowrank_lab.methods.sad import SADModule
from lowrank_lab.metrics.spectral import SpectralMetrics, layer_metrics
from tests.test_kd import batch, fake_datamodule, make_kd


def make_sad(**kw) -> SADModule:
    module = make_kd(cls=SADModule, **kw)
    module.attach_targets(module.teacher.targets(fake_datamodule(), module.target_rank(), 64))
    return module


def test_targets_are_buffers_not_parameters() -> None:
    module = make_sad()
    state = module.state_dict()
    u_keys = [k for k in state if k.startswith("targets.") and k.endswith("u_target")]
    assert len(u_keys) == 4 and any(k.endswith("sigma_target") for k in state)
    assert not any(n.startswith("targets.") for n, _ in module.named_parameters())
    module.double()  # buffers follow .to() like the rest of the module
    assert all(t.u_target.dtype == torch.float64 for t in module.targets.values())
    for _, _, _, _, t in module.spectral_pairs():
        U = t.u_target
        torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=U.dtype), atol=1e-5, rtol=0)


def test_targets_survive_a_checkpoint_roundtrip() -> None:
    module = make_sad()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert any(k.endswith("u_target") for k in checkpoint["state_dict"])
    assert not any(k.startswith("teacher.") and "weight" in k for k in checkpoint["state_dict"])


def test_step0_rule_zero_alignment_at_b_zero() -> None:
    module = make_sad(kd_weight=0.5, alpha_align=1.0)
    module.alpha_schedule = module._build_schedule()  # constant α = 1
    b = batch()
    module.eval()
    out = module(b)
    kd_only = super(SADModule, module).training_loss(b, out)
    assert torch.equal(module.training_loss(b, out), kd_only)  # B = 0: L_align = 0 by rule


def test_alignment_is_zero_on_target_and_drives_b_towards_it() -> None:
    module = make_sad(alpha_align=1.0)
    pairs = module.spectral_pairs()
    with torch.no_grad():
        for _, B, _, _, t in pairs:
            B.copy_(t.u_target @ torch.randn(B.shape[1], B.shape[1]))  # colspan B = U_target
    total = sum(float(grassmann_alignment(B, t.u_target)) for _, B, _, _, t in pairs)
    assert total < 1e-8
    metrics = layer_metrics(*pairs[0][1:4], pairs[0][4].u_target, pairs[0][4].sigma_target)
    assert metrics["principal_angle_max"] < 1e-2 and metrics["subspace_overlap"] == pytest.approx(1.0, abs=1e-6)


def test_sad_step_reduces_alignment_and_clips() -> None:
    module = make_sad(alpha_align=1.0, kd_weight=0.5, grad_clip=1.0)
    module.alpha_schedule = module._build_schedule()
    with torch.no_grad():
        for _, B, _, _, _ in module.spectral_pairs():
            B.normal_(0, 0.1)
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.05)
    b = batch()

    def align() -> float:
        return sum(float(grassmann_alignment(B, t.u_target)) for _, B, _, _, t in module.spectral_pairs())

    start = align()
    for _ in range(10):
        optimizer.zero_grad()
        module.training_loss(b, module(b)).backward()
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 1.0)
        optimizer.step()
    assert align() < start


def test_coefficient_term_reaches_a() -> None:
    module = make_sad(beta_coeff=1.0, alpha_align=0.0)
    with torch.no_grad():
        for _, B, _, _, _ in module.spectral_pairs():
            B.normal_(0, 0.1)
    b = batch()
    module.training_loss(b, module(b)).backward()
    a_grads = [A.grad for _, _, A, _, _ in module.spectral_pairs()]
    assert all(g is not None and g.abs().sum() > 0 for g in a_grads)


def test_schedules_are_completed_with_alpha_and_run_length() -> None:
    module = make_sad(alpha_align=2.0, alpha_schedule=partial(LinearWarmup, warmup_steps=10))
    schedule = module._build_schedule()
    assert schedule(0) == 0.0 and schedule(5) == pytest.approx(1.0) and schedule(20) == 2.0
    module = make_sad(alpha_align=1.0, alpha_schedule=partial(CosineDecay))
    module._trainer = SimpleNamespace(estimated_stepping_batches=40)
    cosine = module._build_schedule()
    assert cosine.total_steps == 40 and cosine(40) == pytest.approx(0.0)
    state = {"alpha_schedule": {"alpha": 0.3, "last_step": 7}}
    module = make_sad(alpha_schedule=partial(AdaptiveSchedule))
    module.on_load_checkpoint(state)
    assert module.alpha_schedule.alpha == 0.3


def test_spectral_metrics_callback_logs_means_and_writes_plot(tmp_path: Path) -> None:
    module = make_sad()
    with torch.no_grad():
        for _, B, _, _, _ in module.spectral_pairs():
            B.normal_(0, 0.1)
    logged: dict = {}
    module.log_dict = lambda d, **k: logged.update(d)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, default_root_dir=str(tmp_path), global_step=3)
    SpectralMetrics().on_validation_epoch_end(trainer, module)
    assert set(logged) == {
        "spectral/principal_angle_mean",
        "spectral/principal_angle_max",
        "spectral/subspace_overlap",
        "spectral/sv_match",
    }
    assert 0 < logged["spectral/principal_angle_mean"] <= logged["spectral/principal_angle_max"] <= 90
    assert (tmp_path / "plots" / "spectral_layers.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "spectral_history.jsonl").read_text().count("\n") == 1


def test_layer_metrics_closed_form() -> None:
    torch.manual_seed(0)
    U = torch.linalg.qr(torch.randn(16, 3)).Q
    V = torch.linalg.qr(torch.randn(12, 3)).Q
    sigma = torch.tensor([3.0, 2.0, 1.0])
    B, A = U.clone(), torch.diag(sigma) @ V.T  # B·A = U diag(σ) Vᵀ: the target exactly
    m = layer_metrics(B, A, 1.0, U, sigma)
    assert m["sv_match"] == pytest.approx(0.0, abs=1e-5) and m["principal_angle_max"] < 0.05
    Q = torch.linalg.qr(torch.cat([U, torch.randn(16, 3)], 1)).Q[:, 3:]  # orthogonal to U
    m = layer_metrics(Q, A, 1.0, U, sigma)
    assert m["principal_angle_mean"] == pytest.approx(90.0, abs=1e-3) and m["subspace_overlap"] < 1e-10
    assert m["sv_match"] == pytest.approx(1.0, abs=1e-5)  # nothing inside the target subspace
    assert layer_metrics(torch.zeros(16, 3), A, 1.0, U, sigma) is None


def test_batched_alignment_equals_per_layer_sum() -> None:
    from lowrank_lab.methods.sad import alignment

    g = torch.Generator().manual_seed(0)
    U = [torch.linalg.qr(torch.randn(16, 4, generator=g, dtype=torch.float64)).Q for _ in range(5)]
    B = [torch.randn(16, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    B.append(torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True))  # another shape
    U[4] = torch.linalg.qr(torch.randn(12, 2, generator=g, dtype=torch.float64)).Q
    batched = alignment(list(zip(B, U)))
    reference = sum(grassmann_alignment(b, u) for b, u in zip(B, U))
    torch.testing.assert_close(batched, reference)
    grads = torch.autograd.grad(batched, B)
    ref_grads = torch.autograd.grad(reference, B)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    zero = [torch.zeros(16, 4, dtype=torch.float64, requires_grad=True), B[1]]  # B = 0: the step-0 fallback
    torch.testing.assert_close(alignment(list(zip(zero, U[:2]))), grassmann_alignment(B[1], U[1]))


def test_configs_compose() -> None:
    from tests.conftest import compose_config

    sad = compose_config("method=sad")
    assert sad.init._target_.endswith("SpectralInit") and sad.method.grad_clip == 1.0
    assert (sad.method.alpha_align, sad.method.beta_coeff, sad.method.kd_temperature) == (1.0, 0.0, 4.0)
    assert compose_config("method=sad", "init=default").init._target_.endswith(".Initializer")
    assert compose_config("method=kd").init._target_.endswith(".Initializer")
    for arm, init in (("kd", ".Initializer"), ("sad", "SpectralInit")):
        cfg = compose_config("experiment=sad_glue", f"method={arm}", "data=rte", "seed=1")
        assert cfg.init._target_.endswith(init) and cfg.peft.lora_r == 8 and cfg.method.kd_temperature == 4.0
    sweep = compose_config("experiment=sad_glue", hydra=True).hydra.sweeper.params
    arms = {"sad_glue_arm": "kd,kd_spectral,sad"}  # conf/sad_glue_arm: kd (B = 0), kd_spectral, sad
    assert dict(sweep) == {"data": "sst2", **arms, "seed": "0,1,2,3,4"}  # small scale: SST-2, 5 seeds
    assert compose_config("experiment=sad_glue").method.teacher.seed == 0  # one teacher
    arm = compose_config("experiment=sad_glue", "sad_glue_arm=kd_spectral")
    assert arm.method._target_.endswith("DistillationModule") and arm.init._target_.endswith("SpectralInit")


def test_sad_refuses_a_teacher_without_updates() -> None:
    from lowrank_lab.errors import LabError

    with pytest.raises(LabError, match="SAD needs a teacher fine-tuned from the student's base"):
        make_kd(cls=SADModule, sad_teacher=False)

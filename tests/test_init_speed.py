"""The synthetic init comparison (lowrank_lab.synthetic.init_speed) against closed forms: G = −2ΔWΣ, the LoRA-FA
init's B₀A₀ = c²·[−G]_r/σ₁ from a brute-force SVD, peft's default and PiSSA inits (built by real peft through the
platform's init= objects) against independent references, every init's output unchanged at step 0, and the CLI's
files and MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lowrank_lab.adapters.init import PeftBuiltinInit
from lowrank_lab.synthetic import init_speed, inits
from lowrank_lab.synthetic.methods import TrainConfig
from lowrank_lab.synthetic.setting import make_setting


@pytest.fixture(scope="module")
def setting():
    return make_setting("gradual", "misaligned", d_out=12, d_in=10, n=64, seed=3)


def test_loss_gradient_is_minus_two_delta_w_sigma(setting) -> None:
    sigma = setting.x.T @ setting.x / setting.x.shape[0]
    torch.testing.assert_close(init_speed.loss_gradient(setting), -2 * setting.delta_w @ sigma, rtol=1e-10, atol=1e-12)


def test_lora_fa_init_is_the_scaled_top_r_step(setting) -> None:
    rank = 3
    step = 2 * setting.delta_w @ (setting.x.T @ setting.x / setting.x.shape[0])  # −G
    U, S, Vh = torch.linalg.svd(step)
    expected = (U[:, :rank] * S[:rank]) @ Vh[:rank] / S[0]
    B, A, base = init_speed.initial_factors(setting, "lora_fa", rank, seed=0)
    torch.testing.assert_close(B @ A, expected / init_speed.STABLE_GAMMA, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(base, setting.w0 - B @ A, rtol=0, atol=1e-15)
    B, A, _ = init_speed.initial_factors(setting, "lora_fa_unit", rank, seed=0)
    torch.testing.assert_close(B @ A, expected, rtol=1e-8, atol=1e-12)


def test_default_init_is_peft_kaiming_uniform(setting) -> None:
    """B₀ = 0 and A₀ ~ kaiming_uniform(a=√5) = U(±1/√d_in) (r, d_in), base W0 untouched; seeded, the caller's RNG
    left alone."""
    rank, (d_out, d_in) = 8, setting.w0.shape
    rng = torch.random.get_rng_state()
    B, A, base = init_speed.initial_factors(setting, "default", rank, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert B.shape == (d_out, rank) and A.shape == (rank, d_in) and B.dtype == A.dtype == torch.float64
    assert torch.equal(B, torch.zeros_like(B)) and torch.equal(base, setting.w0)
    bound = 1 / d_in**0.5  # gain √(2/(1+a²)) = 1/√3 at a = √5; bound = √3·gain/√fan_in
    assert A.abs().max() <= bound and A.abs().max() > 0.8 * bound  # 80 draws: fills the interval
    assert torch.equal(A, init_speed.initial_factors(setting, "default", rank, seed=0).A)
    assert not torch.equal(A, init_speed.initial_factors(setting, "default", rank, seed=1).A)


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_pissa_init_is_the_truncated_svd_of_w0(setting, rank: int) -> None:
    """B₀A₀ = [W0]_r (numpy's SVD in float64) with balanced factors B₀ᵀB₀ = A₀A₀ᵀ = S_r, base = W0 − B₀A₀. peft's
    PiSSA does its SVD in float32 (it refuses a float64 base), so the factors match to float32 precision; the base
    is exact in float64, and peft's own float32 base agrees with it."""
    B, A, base = init_speed.initial_factors(setting, "pissa", rank, seed=0)
    w0 = setting.w0.numpy()
    U, S, Vh = np.linalg.svd(w0, full_matrices=False)
    tol = 1e-5 * S[0]  # float32 SVD of W0 (observed ≈ 3e-7·σ₁)
    np.testing.assert_allclose((B @ A).numpy(), (U[:, :rank] * S[:rank]) @ Vh[:rank], rtol=0, atol=tol)
    np.testing.assert_allclose((B.T @ B).numpy(), np.diag(S[:rank]), rtol=0, atol=tol)
    np.testing.assert_allclose((A @ A.T).numpy(), np.diag(S[:rank]), rtol=0, atol=tol)
    torch.testing.assert_close(base, setting.w0 - B @ A, rtol=0, atol=1e-15)
    peft_base = inits.peft_layer(PeftBuiltinInit("pissa"), setting.w0, rank, seed=0).get_base_layer().weight
    torch.testing.assert_close(peft_base.double(), base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", init_speed.INITS)
def test_every_init_starts_at_the_base_model(setting, init: str) -> None:
    rank = 2
    curve = init_speed.train_curve(setting, init, rank, TrainConfig(steps=5, early_step=5))
    s = torch.linalg.svdvals(setting.delta_w @ torch.linalg.cholesky(setting.sigma))  # σ(ΔW Σ^½), a 2nd route
    assert curve[0] == pytest.approx(float(s.square().sum() / s[rank:].square().sum()), rel=1e-8)  # D = 0
    assert len(curve) == 6 and all(np.isfinite(curve)) and min(curve[1:]) < curve[0]


def test_unknown_init_is_one_clear_error(setting) -> None:
    with pytest.raises(ValueError, match="init='svd' is not allowed"):
        init_speed.initial_factors(setting, "svd", 2, seed=0)


def test_cli_writes_table_plot_and_an_mlflow_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        init_speed.main(["--out", str(tmp_path / "r"), "--tracking-uri", uri, "--seeds", "0,1", "--steps", "12"]) == 0
    )
    md = (tmp_path / "r" / "init_speed.md").read_text()
    assert md.count("\n") == 2 + 2 * len(init_speed.INITS) and (tmp_path / "r" / "init_speed.png").stat().st_size > 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("init_compare").experiment_id])
    history = client.get_metric_history(run.info.run_id, "synthetic/isotropic/lora_fa/ratio")
    assert [m.step for m in history] == list(range(13))

"""The synthetic init comparison (lowrank_lab.synthetic.init_speed) against closed forms: G = −2ΔWΣ, the LoRA-FA
init's B₀A₀ = c²·[−G]_r/σ₁ from a brute-force SVD, every init's output unchanged at step 0, and the CLI's files
and MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lowrank_lab.synthetic import init_speed
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
    B, A = init_speed.initial_factors(setting, "lora_fa", rank, seed=0)
    torch.testing.assert_close(B @ A, expected / init_speed.STABLE_GAMMA, rtol=1e-8, atol=1e-12)
    B, A = init_speed.initial_factors(setting, "lora_fa_unit", rank, seed=0)
    torch.testing.assert_close(B @ A, expected, rtol=1e-8, atol=1e-12)


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

"""SAD-LoRA theorem checks on the linear teacher–student setting (lowrank_lab.synthetic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lowrank_lab.losses import grassmann_alignment
from lowrank_lab.spectral import data_weighted_subspace
from lowrank_lab.synthetic import COVARIANCES, SPECTRA, TrainConfig, error_split, make_setting, solve
from lowrank_lab.synthetic.__main__ import cli
from tests.conftest import compose_config, unpadded

SETTINGS = [(s, c) for s in SPECTRA for c in COVARIANCES]
RANKS = (1, 2, 4, 8)
SHORT = TrainConfig(steps=50, early_step=50)  # the short budget of the KD-LoRA vs SAD-Align comparison


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The problems are tiny: on a shared 2-core machine more threads only add contention (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def settings() -> dict:
    return {(s, c): make_setting(s, c) for s, c in SETTINGS}


def ratio(setting, method: str, rank: int, cfg: TrainConfig = TrainConfig()) -> dict:
    """error_split of the method's last snapshot."""
    snapshots = solve(setting, method, rank, cfg)
    return error_split(setting, *snapshots[max(snapshots)])


def test_generator_is_deterministic_and_has_exact_moments() -> None:
    a, b, c = make_setting("flat", "aligned", seed=3), make_setting("flat", "aligned", seed=3), make_setting(seed=4)
    for name in ("w0", "delta_w", "x", "sigma", "s"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.delta_w, c.delta_w)
    n = a.x.shape[0]
    torch.testing.assert_close(a.x.T @ a.x / n, a.sigma)  # xᵀx/n = Σ exactly
    assert float(a.sigma_tilde.square().sum()) == pytest.approx(1.0)  # ‖W̃‖²_F = 1
    torch.testing.assert_close(a.y, a.x @ (a.w0 + a.delta_w).T)


@pytest.mark.parametrize("spectrum,covariance", SETTINGS)
def test_sad_init_attains_the_bound(settings: dict, spectrum: str, covariance: str) -> None:
    for rank in RANKS:
        split = ratio(settings[spectrum, covariance], "sad_init", rank)
        assert split["ratio"] == pytest.approx(1.0, abs=1e-4), rank
        assert split["angle_deg"] < 1e-3


@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_weight_svd_is_optimal_only_without_reweighting(settings: dict, spectrum: str) -> None:
    for rank in RANKS:
        iso = ratio(settings[spectrum, "isotropic"], "weight_svd", rank)
        aligned = ratio(settings[spectrum, "aligned"], "weight_svd", rank)
        assert iso["ratio"] == pytest.approx(1.0, abs=1e-6) and aligned["ratio"] == pytest.approx(1.0, abs=1e-6)
        mis = ratio(settings[spectrum, "misaligned"], "weight_svd", rank)
        assert abs(mis["coefficient"]) < 1e-8  # truncating ΔW loses only through its subspace (Theorem 3)


@pytest.mark.parametrize("spectrum,rank,margin", [("flat", 1, 0.05), ("flat", 4, 0.3), ("gradual", 8, 0.05)])
def test_weight_svd_falls_short_under_misaligned_covariance(settings, spectrum, rank, margin) -> None:
    assert ratio(settings[spectrum, "misaligned"], "weight_svd", rank)["ratio"] > 1 + margin


@pytest.mark.parametrize("spectrum,covariance,rank", [("sharp", "aligned", 8), ("gradual", "misaligned", 4)])
def test_trained_sad_align_reaches_the_bound(settings: dict, spectrum: str, covariance: str, rank: int) -> None:
    split = ratio(settings[spectrum, covariance], "sad_align", rank)
    assert split["ratio"] <= 1.01
    assert split["angle_deg"] < 0.5


@pytest.mark.parametrize("spectrum,rank", [("sharp", 4), ("gradual", 4)])
def test_short_budget_kd_lora_is_more_misaligned_than_sad_align(settings: dict, spectrum: str, rank: int) -> None:
    setting = settings[spectrum, "misaligned"]
    kd, sad = ratio(setting, "kd_lora", rank, SHORT), ratio(setting, "sad_align", rank, SHORT)
    assert kd["misalignment"] > 3 * sad["misalignment"] and kd["misalignment"] > 0.01
    assert kd["angle_deg"] > sad["angle_deg"]
    for split in (kd, sad):  # ratio = 1 + misalignment + coefficient
        assert split["ratio"] == pytest.approx(1 + split["misalignment"] + split["coefficient"], rel=1e-9)


def test_unknown_method_is_one_clear_error(settings: dict) -> None:
    with pytest.raises(ValueError, match=r"method='lora' is not allowed; use one of \('kd_lora', 'sad_align'"):
        solve(settings["gradual", "isotropic"], "lora", 2, SHORT)


def test_misalignment_is_sandwiched_by_the_grassmann_loss(settings: dict) -> None:
    """(σ_r² − σ_{r+1}²)·L_align ≤ ‖(I − P_B)W̃‖² − Σ_{i>r}σᵢ² ≤ σ_1²·L_align  (Theorem 2)."""
    setting, rank = settings["gradual", "misaligned"], 4
    B, A = solve(setting, "kd_lora", rank, TrainConfig(steps=20, early_step=20))[20]
    split = error_split(setting, B, A)
    s2 = setting.sigma_tilde.square()
    u_target = data_weighted_subspace(setting.delta_w, setting.x, rank, method="exact")[0]
    align = float(grassmann_alignment(B, u_target))
    excess = split["misalignment"] * split["bound"]
    assert align > 1e-3
    assert float(s2[rank - 1] - s2[rank]) * align <= excess * (1 + 1e-9) <= float(s2[0]) * align


def test_bad_option_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert cli(["--out", str(tmp_path), "--spectra", "wavy", "--ranks", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "spectrum='wavy'" in err and "sharp" in err
    assert cli(["--out", str(tmp_path), "--ranks", "0,32"]) == 2
    assert "ranks=(0, 32)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_writes_table_plot_and_one_mlflow_run(tmp_path: Path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    out, uri = tmp_path / "report", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--spectra", "gradual", "--covariances", "isotropic,misaligned", "--ranks", "2,4", "--steps", "20"]
    args += ["--early-step", "5", "--out", str(out), "--tracking-uri", uri, "--experiment", "synthetic_test"]
    assert cli(args) == 0  # in-process: `python -m lowrank_lab.synthetic` only adds sys.exit around it
    files = {"sad_synthetic.md", "sad_synthetic.csv", "sad_synthetic.png"}
    assert files <= {p.name for p in out.iterdir()}
    assert "| gradual | misaligned | 4 |" in unpadded(capsys.readouterr().out)  # the table is printed too
    table = unpadded((out / "sad_synthetic.md").read_text())
    assert "| gradual | misaligned | 4 |" in table and "KD-LoRA @5" in table and "SAD-Align @20" in table
    assert len((out / "sad_synthetic.csv").read_text().splitlines()) == 1 + 2 * 2 * (2 + 2 * 2)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("synthetic_test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert files == {a.path for a in client.list_artifacts(run.info.run_id)}
    metrics = run.data.metrics
    assert metrics["synthetic/gradual/misaligned/sad_init/r4"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["synthetic/gradual/misaligned/weight_svd/r4"] == pytest.approx(1.0, abs=1e-4)
    assert all(len(k) <= 250 for k in metrics)
    history = client.get_metric_history(run.info.run_id, "synthetic/gradual/misaligned/kd_lora/r4/misalignment")
    assert sorted(m.step for m in history) == [5, 20]
    assert run.data.params["ranks"] == "2,4" and run.data.params["train.steps"] == "20"


def test_datamodule_composes_and_yields_teacher_pairs() -> None:
    cfg = compose_config("data=synthetic", "data.n=64", "data.n_eval=16", "data.batch_size=8")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 32) and batch["y"].shape == (8, 48)
    w = dm.setting.w0 + dm.setting.delta_w
    torch.testing.assert_close(batch["y"], batch["x"] @ w.T)
    val = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val["y"], val["x"] @ w.T)
    assert len(dm.splits["test"]) == 16 and dm.task.regression

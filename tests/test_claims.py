"""The claims a report checks (lowrank_lab.tracking.claims), on stores written by hand with MlflowClient: SLoRA's
criterion per gate mode against the `none` run of the same seed, evaluated by hand below; SAD − KD paired by seed
against numpy over the values the store was written with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from lowrank_lab.tracking import claims
from lowrank_lab.tracking.report import write_report
from lowrank_lab.tracking.results import load_sweep
from tests.sweep_fixture import Store, new_store

pytest_plugins = ["tests.sweep_fixture"]

# (seed, gate mode) -> final val/loss, final gate/accepted_steps, wall seconds; `none` is each seed's baseline
SLORA = {
    (42, "none"): (0.400, 100, 100),
    (42, "novelty"): (0.401, 60, 80),  # +0.25 % loss, −40 % steps: holds
    (42, "loss_floor"): (0.410, 50, 70),  # +2.5 % loss: fails
    (42, "combined"): (0.4019, 72, 90),  # +0.475 % loss but only −28 % steps: fails
    (43, "none"): (0.500, 200, 120),
    (43, "novelty"): (0.502, 130, 96),  # +0.4 %, −35 %: holds
    (43, "loss_floor"): (0.499, 138, 84),  # −0.2 %, −31 %: holds
    (43, "combined"): (0.500, 120, 108),  # 0 %, −40 %: holds
    (44, "novelty"): (0.300, 10, 50),  # no `none` run of seed 44: not compared
}
HOLDS = {(42, "novelty"): True, (42, "loss_floor"): False, (42, "combined"): False}
HOLDS |= {(43, "novelty"): True, (43, "loss_floor"): True, (43, "combined"): True}


def _slora_store(root: Path) -> str:
    uri = new_store(root)
    client = MlflowClient(uri)
    exp = client.create_experiment("ablations", artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp, tags={"lowrank_lab.sweep": "true"}).info.run_id
    start = 1_700_000_000_000
    for (seed, mode), (loss, accepted, wall) in SLORA.items():
        tags = {"mlflow.parentRunId": parent, "override.experiment": "slora_ablation"}
        tags |= {"override.method.gate.mode": mode, "override.seed": str(seed)}
        run = client.create_run(exp, start_time=start, tags=tags).info.run_id
        params = {"method._target_": "lowrank_lab.methods.slora.SLoRAModule", "method.base": "finetune"}
        params |= {"method.gate.mode": mode, "data.task": "sst2", "seed": str(seed)}
        metrics = [Metric("val/loss", loss * 1.1, 0, 10), Metric("val/loss", loss, 0, 20)]
        metrics += [Metric("gate/accepted_steps", accepted / 2, 0, 10), Metric("gate/accepted_steps", accepted, 0, 20)]
        metrics += [Metric("val/accuracy", 1 - loss, 0, 20)]
        client.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run, "FINISHED", end_time=start + 1000 * wall)
    failed = client.create_run(exp, tags={"mlflow.parentRunId": parent, "override.method.gate.mode": "novelty"})
    client.log_batch(
        failed.info.run_id, metrics=[Metric("val/loss", 0.0, 0, 1), Metric("gate/accepted_steps", 1, 0, 1)]
    )
    client.set_terminated(failed.info.run_id, "FAILED")
    client.set_terminated(parent, "FINISHED")
    return uri


def test_slora_criterion_by_hand(tmp_path: Path) -> None:
    sweep = load_sweep("ablations", _slora_store(tmp_path))
    assert sweep.experiment_file == "slora_ablation"
    files = write_report(sweep, tmp_path / "report")

    table = pd.read_csv(files["claim"])
    gated = table[table["mode"] != "none"]
    assert sorted(zip(gated["seed"], gated["mode"])) == sorted(HOLDS)  # seed 44 and the failed job left out
    for row in gated.itertuples():
        loss, accepted, wall = SLORA[(row.seed, row.mode)]
        base_loss, base_accepted, base_wall = SLORA[(row.seed, "none")]
        assert row.val_loss_change == pytest.approx(loss / base_loss - 1)
        assert row.accepted_steps_change == pytest.approx(accepted / base_accepted - 1)
        assert row.wall_s_change == pytest.approx(wall / base_wall - 1)
        assert row.criterion == HOLDS[(row.seed, row.mode)]

    markdown = files["markdown"].read_text()
    assert "**Verdict:** criterion holds for: novelty; fails for: loss_floor, combined" in markdown
    # novelty: loss +0.25 / +0.40 %, steps −40 / −35 %, wall −20 / −20 %
    assert (
        "| sst2 | novelty | 2 | 0.4515 ± 0.0714 (n=2) | +0.32 ± 0.11 % | -37.50 ± 3.54 % | -20.00 ± 0.00 % " in markdown
    )
    assert "| holds (2/2 seeds) |" in markdown and markdown.count("| fails (1/2 seeds) |") == 2
    assert "| sst2 | none | 2 |" in markdown and "| baseline |" in markdown
    assert (tmp_path / "report" / "val_loss_vs_accepted_steps.png").exists()


def test_sad_glue_paired_delta(fake_sweep: Store, tmp_path: Path) -> None:
    fake = fake_sweep
    sweep = load_sweep(fake.parent_id, fake.uri)
    sweep.experiment = "sad_glue"  # its jobs have no `experiment=` tag: the MLflow experiment's name decides
    files = write_report(sweep, tmp_path / "report", log=False)
    table = pd.read_csv(files["claim"])
    assert list(table["task"]) == ["rte", "stsb"]
    held = []
    for row in table.itertuples():
        diffs = np.array([fake.values[("sad", row.task, s)] - fake.values[("kd", row.task, s)] for s in range(3)])
        mean, std = diffs.mean(), diffs.std(ddof=1)
        assert (row.delta_mean, row.delta_std, row.n) == (pytest.approx(mean), pytest.approx(std), 3)
        here = "ahead" if mean - std > 0 else "behind" if mean + std < 0 else "within seed spread"
        assert row.here == here and row.paper_delta == claims.PAPER_SAD_MINUS_KD[row.task]
        assert row.holds == (here == "ahead")  # the paper has SAD better on both RTE and STS-B
        held += [row.task] if row.holds else []
    markdown = files["markdown"].read_text()
    assert f"**Verdict:** holds on {len(held)} of 2 tasks ({', '.join(held) or 'none'})" in markdown
    assert "## Claim: SAD-LoRA vs KD-LoRA" in markdown and "## sad vs kd, paired by seed" not in markdown


def test_no_claim_without_its_experiment(fake_sweep: Store) -> None:
    sweep = load_sweep(fake_sweep.parent_id, fake_sweep.uri)
    sweep.experiment = "slora_ablation"  # kd vs sad: nothing gated to compare
    claim = claims.check(sweep, ["method"])
    assert claim is not None and claim.table.empty and claim.verdict.startswith("not checked: no finished `none`")
    sweep.experiment = "anything_else"
    assert claims.check(sweep, ["method"]) is None


# SLAD arms: seed -> arm -> (teacher accuracy, student accuracy, align/cka, time/train_s); ft_both is left out of
# seed 2 and probe_kd entirely, which must not stop the other checks
SLAD = {
    1: {"ft_kd": (0.90, 0.80, 0.50, 30), "lora_kd": (0.88, 0.82, 0.70, 20), "separate": (0.85, 0.78, 0.4, 12)},
    2: {"ft_kd": (0.91, 0.81, 0.60, 32), "lora_kd": (0.87, 0.78, 0.65, 21), "separate": (0.86, 0.77, 0.4, 12)},
}
SLAD[1] |= {"slad_full": (0.87, 0.80, 0.8, 10), "ft_both": (0.92, 0.84, 0.3, 25)}
SLAD[2] |= {"slad_full": (0.85, 0.79, 0.8, 11)}


def test_slad_claims_against_hand_means(tmp_path: Path) -> None:
    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("slad", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = client.create_run(exp, tags={"lowrank_lab.sweep": "true"}).info.run_id
    for seed, arms in SLAD.items():
        for arm, (teacher, student, cka, train_s) in arms.items():
            tags = {"mlflow.parentRunId": parent, "override.experiment": "slad", "override.arm": arm}
            run = client.create_run(exp, tags=tags).info.run_id
            values = {"val/teacher_accuracy": teacher, "val/student_accuracy": student, "val/teacher_loss": 9.0}
            values |= {"align/cka": cka, "time/train_s": train_s}
            params = [Param("arm", arm), Param("seed", str(seed)), Param("data.task", "sst2")]
            client.log_batch(run, metrics=[Metric(k, v, 0, 5) for k, v in values.items()], params=params)
            client.set_terminated(run, "FINISHED")
    claim = claims.check(load_sweep(parent, uri), ["method"])

    def mean(arm: str, i: int) -> float:
        return float(np.mean([arms[arm][i] for arms in SLAD.values() if arm in arms]))

    expected = {  # the five checks of claims.SLAD_CHECKS, evaluated by hand from the table above
        "cka": mean("lora_kd", 2) > mean("ft_kd", 2),  # 0.675 > 0.55: holds
        "distils": mean("lora_kd", 1) > mean("ft_kd", 1),  # 0.80 < 0.805: does not hold
        "student": mean("slad_full", 1) > mean("separate", 1),  # 0.795 > 0.775: holds
        "teacher": mean("slad_full", 0) > mean("separate", 0),  # 0.86 vs 0.855: holds
        "speed": 2 * mean("slad_full", 3) <= mean("ft_both", 3),  # 21 ≤ 25: holds
    }
    got = dict(zip(expected, claim.shown["holds"]))
    assert got == {k: "yes" if v else "no" for k, v in expected.items()}
    assert claim.verdict.startswith(f"holds for {sum(expected.values())} of 5 checks")
    assert float(claim.shown["lora_kd"][0]) == pytest.approx(mean("lora_kd", 2), abs=1e-4)

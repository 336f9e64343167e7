"""`hparams_search=optuna` (issue 16, item 6): Hydra's Optuna sweeper runs N trials, each a child run of one sweep
run, maximising the value run() returns (the task's monitor metric); the best trial's params are tagged on the
parent run."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, mlflow_runs, run_cli


def test_optuna_search_composes() -> None:
    cfg = compose_config("hparams_search=optuna", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"method.optimizer.lr", "peft.lora_r"}
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")


@pytest.mark.slow
def test_optuna_trials_are_children_and_best_is_tagged(tmp_path: Path) -> None:
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "model=tiny-bert", "trainer=debug",
            "threads=1", "data.train_limit=64", "extras.print_config=false"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("lowrank_lab.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2 and parent.info.status == "FINISHED"
    for child in children:
        assert 1e-4 <= float(child.data.params["method.optimizer.lr"]) <= 3e-3
        assert child.data.params["peft.lora_r"] in {"4", "8", "16"}
    scores = [c.data.metrics["val/accuracy"] for c in children]  # the objective each trial returned
    tags = parent.data.tags
    assert float(tags["best.value"]) == pytest.approx(max(scores))
    best = {k: tags[f"best.{k}"] for k in ("method.optimizer.lr", "peft.lora_r")}
    winners = [c for c in children if all(float(c.data.params[k]) == float(v) for k, v in best.items())]
    assert winners and winners[0].data.metrics["val/accuracy"] == pytest.approx(max(scores))
    (results,) = tmp_path.glob("multiruns/*/*/optimization_results.yaml")
    assert OmegaConf.load(results).best_value == pytest.approx(max(scores))

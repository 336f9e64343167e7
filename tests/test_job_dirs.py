"""Issue 15.3: job dirs never collide. Two processes started together get different run/sweep dirs (the stamp
carries microseconds and the pid) and, through run.py, different MLflow runs and checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, REPO, mlflow_runs

COMPOSE = """
import sys
import lowrank_lab  # registers ${lab.stamp:...}
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("config", overrides=["paths.output_dir=/out"], return_hydra_config=True)
sys.stdin.readline()  # both processes resolve the dirs only once both are up: the same second, as in a sweep burst
print(cfg.hydra.run.dir, cfg.hydra.sweep.dir, cfg.hydra.run.dir)
"""


def test_two_processes_resolve_different_dirs() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COMPOSE, str(REPO / "conf")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate("go\n", timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for proc, (run_dir, sweep_dir, again) in zip(procs, outs):
        assert run_dir == again, "resolved once per process (cached like Hydra's ${now:})"
        assert run_dir.startswith("/out/runs/") and sweep_dir.startswith("/out/multiruns/")
        assert run_dir.endswith(f"-{proc.pid}") and sweep_dir.endswith(f"-{proc.pid}")
    assert outs[0][0] != outs[1][0] and outs[0][1] != outs[1][1]


@pytest.mark.slow  # two tiny runs side by side: ~60 s on two shared cores
def test_two_runs_started_together_get_their_own_dir_and_mlflow_run(tmp_path: Path) -> None:
    from lowrank_lab.train import resolve_checkpoint

    # no store yet: both create it (MLflow's migrations on a new sqlite DB race unless one waits for the other)
    args = ["model=tiny-bert", "trainer=debug", "trainer.limit_val_batches=1", "data.train_limit=16", "test=false"]
    args += ["threads=1", f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO, env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=600)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]

    jobs = sorted(tmp_path.glob("runs/*/*"))
    assert len(jobs) == 2 and {j.name.rsplit("-", 1)[1] for j in jobs} == {str(p.pid) for p in procs}
    ids = {(j / "mlflow_run_id").read_text().strip() for j in jobs}
    runs = mlflow_runs(tmp_path)
    assert len(ids) == 2 and {r.info.run_id for r in runs} == ids
    assert {r.data.tags["job_dir"] for r in runs} == {str(j) for j in jobs}
    assert all(r.info.status == "FINISHED" for r in runs)
    for job in jobs:  # each wrote its own checkpoint and adapter; the checkpoint passes ckpt_path's safe load
        last = job / "checkpoints" / "last.ckpt"
        assert last.is_file() and (job / "adapter" / "adapter_config.json").is_file()
        assert resolve_checkpoint(str(last), tmp_path) == str(last)  # torch.load(weights_only=True) reads ours

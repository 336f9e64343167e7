"""Issue 15.8: `ckpt_path` is checked without unpickling the user's file; `user:pass@` in a URI never reaches MLflow
params, tags or run names (real sqlite store); paths with spaces survive the Makefile and the sbatch setup lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lowrank_lab.errors import LabError
from lowrank_lab.tracking.store import mask_credentials
from lowrank_lab.train import resolve_checkpoint
from tests.conftest import REPO, compose_config


class Payload:
    """Unpickling this runs `Path(marker).touch()`: what a hostile .ckpt could do with any callable."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_ckpt_path_is_checked_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": Payload(marker)}, ckpt)
    with pytest.raises(LabError, match=r"^ckpt_path='.*evil\.ckpt': a readable Lightning checkpoint, tensors"):
        resolve_checkpoint(str(ckpt), tmp_path)
    assert not marker.exists(), "the check must not run code from the file"
    torch.load(ckpt, weights_only=False)  # the reference: a full unpickle does run it
    assert marker.exists()


def test_a_plain_checkpoint_passes(tmp_path: Path) -> None:
    ckpt = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1, "loops": {"fit": {"n": 3}}}, ckpt)
    assert resolve_checkpoint(str(ckpt), tmp_path) == str(ckpt)


# ----- credentials ------------------------------------------------------------------------------------------------
SECRET = "s3cr3t-pw"
URIS = {
    "http://alice:s3cr3t-pw@mlflow.lab:5000": "http://***@mlflow.lab:5000",
    "postgresql+psycopg2://bob:s3cr3t-pw@db.lab/mlflow": "postgresql+psycopg2://***@db.lab/mlflow",
    "https://s3cr3t-pw@host/x": "https://***@host/x",
    "sqlite:////data/a b/mlflow.db": "sqlite:////data/a b/mlflow.db",
    "mail me@lab.org, see http://host/a@b": "mail me@lab.org, see http://host/a@b",
}


@pytest.mark.parametrize("uri", sorted(URIS))
def test_mask_credentials(uri: str) -> None:
    assert mask_credentials(uri) == URIS[uri]


def _everything_logged(client, run_id: str) -> str:
    run = client.get_run(run_id)
    return json.dumps([run.info.run_name, run.data.params, run.data.tags])


def test_job_run_params_and_tags_hold_no_credentials(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from lowrank_lab.tracking.job import start_job_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    remote = f"http://alice:{SECRET}@mlflow.lab:5000"
    cfg = OmegaConf.create(
        {
            "logger": {"tracking_uri": store, "experiment_name": "sec", "mirror_uri": remote},
            "data": {"path": f"https://alice:{SECRET}@files.lab/sst2.csv"},
        }
    )
    overrides = [f"+logger.mirror_uri={remote}", f"data.path=https://alice:{SECRET}@files.lab/sst2.csv"]
    run_id = start_job_run(cfg, tmp_path / "job", overrides, run_name=f"mirror={remote}")
    logged = _everything_logged(MlflowClient(store), run_id)
    assert SECRET not in logged and "alice" not in logged
    params = MlflowClient(store).get_run(run_id).data.params
    assert params["logger.mirror_uri"] == "http://***@mlflow.lab:5000"
    assert params["logger.tracking_uri"] == store  # nothing else changes


def test_sweep_parent_tags_hold_no_credentials(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from lowrank_lab.tracking.sweep import MLflowSweepCallback

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = OmegaConf.create(
        {
            "logger": {"tracking_uri": store, "experiment_name": "sec"},
            "hydra": {
                "overrides": {"task": [f"+logger.mirror_uri=http://alice:{SECRET}@h:5000", "peft.lora_r=4,8"]},
                "sweep": {"dir": str(tmp_path / "sweep")},
            },
        }
    )
    callback = MLflowSweepCallback()
    callback.on_multirun_start(config)
    run_id = callback.run_id
    try:
        logged = _everything_logged(MlflowClient(store), run_id)
        assert SECRET not in logged and "http://***@h:5000" in logged and "peft.lora_r=4,8" in logged
    finally:
        callback._close("FINISHED")


# ----- paths with spaces ------------------------------------------------------------------------------------------
ECHO = f"""#!{sys.executable}
import json, sys
with open(sys.argv[0] + ".calls", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_makefile_passes_paths_with_spaces_as_one_argument(tmp_path: Path) -> None:
    """`make reproduce-*` and `make ui` in a checkout whose path has spaces and a quote: every path argument arrives
    whole (a fake .venv/bin/python and mlflow record their argv)."""
    root = tmp_path / "my lab's checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "conf" / "experiment", root / "conf" / "experiment")
    for tool in ("python", "mlflow"):
        (root / ".venv" / "bin" / tool).write_text(ECHO)
        (root / ".venv" / "bin" / tool).chmod(0o755)
    (root / ".venv" / ".installed").touch()
    (root / "outputs" / "data").mkdir(parents=True)
    (root / "outputs" / "data" / ".prepared").touch()
    reports = root / "my reports"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    for target in ("reproduce-adapters", "reproduce-sad-synthetic", "ui"):
        proc = subprocess.run(
            ["make", "-s", target, f"REPORTS={reports}"], cwd=root, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in (root / ".venv" / "bin" / "python.calls").read_text().splitlines()]
    uri = f"sqlite:///{root}/outputs/mlflow.db"
    override = next(a for a in calls[0] if a.startswith("logger.tracking_uri="))  # run.py -m experiment=…
    assert OverridesParser.create().parse_override(override).value() == uri  # what Hydra reads from it
    assert calls[1][calls[1].index("--tracking-uri") + 1] == uri  # report
    assert calls[1][calls[1].index("--out") + 1] == f"{reports}/adapter_compare"
    assert calls[2][calls[2].index("--out") + 1] == f"{reports}/sad_synthetic"  # lowrank_lab.synthetic
    ui = json.loads((root / ".venv" / "bin" / "mlflow.calls").read_text())
    assert ui[ui.index("--backend-store-uri") + 1] == uri
    assert ui[ui.index("--default-artifact-root") + 1] == f"{root}/outputs/mlartifacts"


def test_sbatch_setup_lines_quote_paths_with_spaces(tmp_path: Path) -> None:
    """hydra/launcher=slurm's `setup` lines, run by bash as sbatch runs them: the venv under a root with spaces and
    a quote is activated, and SLURM_CONF with spaces is exported whole."""
    sys.path.insert(0, str(REPO / "launchers" / "plugins"))  # as run.py does: hydra/launcher=slurm's plugin
    root = tmp_path / "lab root's copy"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "activate").write_text("export ACTIVATED=yes\n")
    slurm_conf = str(tmp_path / "slurm etc" / "slurm.conf")
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "LOWRANK_LAB_ROOT")}
    os.environ.update(SLURM_CONF=slurm_conf, LOWRANK_LAB_ROOT=str(root))  # run.py sets the root to its checkout
    try:
        cfg = compose_config("hydra/launcher=slurm", hydra=True)
        setup = OmegaConf.to_container(cfg.hydra.launcher.setup, resolve=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    script = "\n".join(["set -e", *setup, 'echo "$ACTIVATED|$SLURM_CONF"'])
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "ACTIVATED")}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == f"yes|{slurm_conf}"

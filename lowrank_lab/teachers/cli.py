"""The teacher CLI: compose conf/ as run.py would, then prepare (or load from the cache) the run's teacher, and
optionally its SAD spectral targets.

    python -m lowrank_lab.teachers prepare model=minilm data=rte [method.teacher.lr=2e-4 method.teacher.epochs=8]
    python -m lowrank_lab.teachers targets model=minilm data=rte peft.lora_r=8 [method.n_calib=2048]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from lowrank_lab.errors import LabError
from lowrank_lab.methods.keys import method_key
from lowrank_lab.teachers.load import teacher_for_run
from lowrank_lab.teachers.module import Teacher

REPO = Path(__file__).resolve().parents[2]
USAGE = "usage: python -m lowrank_lab.teachers {prepare|targets} model=… data=… [method.teacher.…=…]"


def compose_run_parts(overrides: list[str], sad: bool = True) -> tuple[Any, Any, Teacher, Any]:
    """Compose conf/ as run.py would (method=sad unless a method is given), build data, init and the teacher in
    train.py's order (same random stream, so a random-init base matches the runs')."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    os.environ.setdefault("LOWRANK_LAB_ROOT", str(REPO))
    if sad and not any(o.split("=", 1)[0].lstrip("+~") == "method" for o in overrides):
        overrides = ["method=sad", *overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    init = instantiate(cfg.init)
    backbone = instantiate(cfg.model, num_labels=datamodule.task.num_labels)
    teacher = teacher_for_run(cfg, backbone, datamodule, init)
    if teacher is None:
        raise LabError(f"method={cfg.method._target_}: has no `teacher` settings; use method=kd or method=sad")
    return cfg, datamodule, teacher, init


def prepare(overrides: list[str]) -> None:
    """Prepare the teacher (or find it cached) and print its key and scores."""
    _, _, teacher, _ = compose_run_parts(overrides)
    keep = ("metric", "dev", "majority", "beats_majority", "steps", "train_seconds", "recipe")
    print(json.dumps({"key": teacher.key, **{k: teacher.info.get(k) for k in keep}}, indent=2, default=str))


def targets(overrides: list[str]) -> None:
    """Prepare the teacher, then extract and cache its spectral targets at `peft.lora_r` (SAD's u_target, σ̃)."""
    cfg, datamodule, teacher, _ = compose_run_parts(overrides, sad=True)
    n_calib = int(OmegaConf.select(cfg, method_key(cfg)).get("n_calib", 2048))
    found = teacher.targets(datamodule, int(cfg.peft.lora_r), n_calib)
    print(f"targets: {teacher.last_targets_path or '(not cached: no cache_dir)'}")
    for name, t in found.items():
        s = t["sigma_weighted"]
        print(f"  {name}: rank {s.numel()}, σ̃₁={float(s[0]):.4g}, σ̃_r={float(s[-1]):.4g}")


COMMANDS = {"prepare": prepare, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        COMMANDS[args[0]](args[1:])
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

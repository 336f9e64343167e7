"""Checks across config groups that no single group can make alone (model head vs task, learning rates, a method's
epoch split), run by train.py before any model is built, any run is tracked or anything is written."""

from __future__ import annotations

import os
from numbers import Real
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lowrank_lab.data.task import KINDS
from lowrank_lab.errors import LabError, bad_value


def validate(cfg: DictConfig, datamodule: Any) -> None:
    """Raise one LabError for the first mismatch: model head vs `datamodule.task`, a learning rate <= 0, a
    sequential method whose `trainer.max_epochs` leaves no epochs for the student."""
    check_head(cfg, datamodule.task.kind)
    check_learning_rates(cfg.method)
    check_epochs(cfg)


def _choice(group: str, fallback: str) -> str:
    """The entry the user picked for `group` (`model=tiny-vit`), or `fallback` outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return fallback


def entries_with_head(head: str) -> list[str]:
    """The conf/model entries whose head is `head` (what the message offers instead)."""
    conf = Path(os.environ.get("LOWRANK_LAB_ROOT", Path(__file__).resolve().parents[1])) / "conf" / "model"
    return sorted(p.stem for p in conf.glob("*.yaml") if OmegaConf.load(p).get("head") == head)


def check_head(cfg: DictConfig, kind: str) -> None:
    """A sequence-classification head for GLUE, a causal-LM head for text generation, an image head for images:
    anything else fails with shape errors mid-fit, after the run exists."""
    head = cfg.model.get("head", "seq_cls")
    if kind not in KINDS or head == kind:
        return
    model = _choice("model", str(cfg.model.get("name_or_path")))
    data = _choice("data", str(cfg.data.get("task", cfg.data.get("_target_"))))
    offer = ", ".join(f"model={e}" for e in entries_with_head(kind)[:4])
    classify_lm = head in KINDS and KINDS[head].generative and kind == "seq_cls"  # an LM classifies with a cls head
    extra = f" or model.head={kind} on a pretrained causal-LM entry" if classify_lm else ""
    raise LabError(
        f"model={model!r} has head {head!r}, which cannot serve data={data!r} ({KINDS[kind].description}); "
        f"allowed: a model whose head is {kind!r} ({offer}{extra})"
    )


def check_learning_rates(method: DictConfig) -> None:
    """Every `lr` / `*_lr` under `method` (optimizer, teacher recipe, SLAD's teacher_lr) is null or > 0."""

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}"
            if isinstance(value, dict):
                walk(value, name)
            elif (key == "lr" or str(key).endswith("_lr")) and value is not None:
                if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
                    raise bad_value(name, value, "a learning rate > 0")

    walk(OmegaConf.to_container(method, resolve=True), "method")


def check_epochs(cfg: DictConfig) -> None:
    """`method.training=sequential` (SLAD's baselines) trains the teacher alone for `method.teacher_epochs`, then
    the student: `trainer.max_epochs` must leave the student at least one epoch."""
    if cfg.method.get("training") != "sequential":
        return
    teacher_epochs = int(cfg.method.get("teacher_epochs", 1))
    epochs = cfg.trainer.get("max_epochs")
    if not isinstance(epochs, int) or epochs <= teacher_epochs:
        raise bad_value(
            "trainer.max_epochs",
            epochs,
            f"an integer > method.teacher_epochs={teacher_epochs} (training=sequential: the teacher alone for "
            f"{teacher_epochs} epoch(s), then the student)",
        )


# where a resumed job may differ from the attempt that wrote its checkpoint: how it runs and logs, not what it trains
RESUME_FREE = ("logger", "paths", "threads", "extras", "ckpt_path", "resume_check", "callbacks", "hydra")
RESUME_FREE_TRAINER = (  # + max_epochs / max_steps: train an ended job longer
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "enable_progress_bar",
    "log_every_n_steps",
    "max_epochs",
    "max_steps",
)


def check_resume(cfg: DictConfig, job_dir: Path) -> None:
    """A job dir resumed from its checkpoint must be resumed with the config that wrote it (its
    `resolved_config.yaml`), up to launcher/logging keys; `resume_check=false` resumes anyway."""
    saved_file = job_dir / "resolved_config.yaml"
    if not cfg.get("resume_check", True) or not saved_file.is_file():
        return
    from lowrank_lab.tracking.store import flat_values

    saved = flat_values(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False))
    now = flat_values(OmegaConf.to_container(cfg, resolve=True))
    free = lambda key: key.split(".")[0] in RESUME_FREE or key in {f"trainer.{k}" for k in RESUME_FREE_TRAINER}  # noqa: E731
    changed = sorted(k for k in saved.keys() | now.keys() if not free(k) and saved.get(k) != now.get(k))
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise LabError(
            f"{key}={now.get(key)!r}: this job dir was trained with {key}={saved.get(key)!r}{more}; resuming it "
            f"with another config is refused (pass resume_check=false to resume anyway, or use a new job dir)"
        )

"""Time to accuracy: the default run (conf/ composed with Hydra; Lightning + FinetuneModule + GlueDataModule with
dynamic padding and length-grouped batches) against a hand-written torch loop on the same model, rows, optimizer and
schedule that pads every batch to max_length and shuffles plainly. Both evaluate on dev every `eval_every` steps and
stop at the first evaluation ≥ the target; training time excludes evaluation. Goal: platform / loop ≤ 0.6.

Settings (environment): BENCH_QUICK=1 (1000 rows, target 0.6, dev 300 rows, eval every 8 steps), BENCH_TTA_ROWS,
BENCH_TTA_TARGET, BENCH_TTA_EVAL_EVERY, BENCH_TTA_VAL_ROWS (each overrides the mode's value), BENCH_TTA_OVERRIDES
(extra Hydra overrides, space-separated). When a run never reaches the target, both are timed to the best dev
accuracy both reached (`target_used`).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmarks.common import DEVICE, device_name, on_one_cpu_thread, run_alone, step_clock, wall_now
from lowrank_lab.adapters import wrap
from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.methods.finetune import FinetuneModule

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    rows: int | None  # data.train_limit; None: the config's
    target: float  # dev accuracy both runs train to
    eval_every: int  # optimisation steps between dev evaluations
    val_rows: int | None  # data.val_limit; None: the config's (all of dev)
    overrides: tuple[str, ...]
    quick: bool


def _env_number(key: str, default: Any, kind: type, allowed: str) -> Any:
    raw = os.environ.get(key)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("null", "none"):
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise bad_value(key, raw, allowed) from None
    if value <= 0 or (kind is float and value > 1):
        raise bad_value(key, raw, allowed)
    return value


def settings_from_env() -> Settings:
    quick = os.environ.get("BENCH_QUICK", "0") not in ("", "0", "false")
    return Settings(
        rows=_env_number("BENCH_TTA_ROWS", 1000 if quick else None, int, "a positive row count or null"),
        target=_env_number("BENCH_TTA_TARGET", 0.6 if quick else 0.80, float, "an accuracy in (0, 1]"),
        eval_every=_env_number("BENCH_TTA_EVAL_EVERY", 8 if quick else 25, int, "a positive number of steps"),
        val_rows=_env_number("BENCH_TTA_VAL_ROWS", 300 if quick else None, int, "a positive row count or null"),
        overrides=tuple(os.environ.get("BENCH_TTA_OVERRIDES", "").split()),
        quick=quick,
    )


def compose_default(s: Settings) -> DictConfig:
    """conf/config.yaml as `python run.py` composes it, plus the benchmark's row limits and overrides."""
    from hydra import compose, initialize_config_dir

    os.environ.setdefault("LOWRANK_LAB_ROOT", str(REPO))
    overrides = [*s.overrides]
    if s.rows is not None:
        overrides.append(f"data.train_limit={s.rows}")
    if s.val_rows is not None:
        overrides.append(f"data.val_limit={s.val_rows}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@dataclass
class Eval:
    step: int
    dev: float
    cpu_s: float  # training clock (step_clock) since the start, evaluation excluded
    wall_s: float


class _EvalClock(L.Callback):
    """Records (step, dev accuracy, training time so far) at each validation and stops at the target."""

    def __init__(self, metric: str, target: float) -> None:
        self.metric, self.target, self.history = metric, target, []
        self.start = (0.0, 0.0)
        self.excluded = [0.0, 0.0]  # evaluation time (cpu, wall) so far
        self.val_start = (0.0, 0.0)

    def begin(self) -> None:
        self.start = (step_clock(), wall_now())

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.val_start = (step_clock(), wall_now())

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        (cpu0, wall0), (cpu, wall) = self.val_start, self.start
        dev = float(trainer.callback_metrics[self.metric])
        trained = (cpu0 - cpu - self.excluded[0], wall0 - wall - self.excluded[1])
        self.history.append(Eval(trainer.global_step, dev, *trained))
        self.excluded[0] += step_clock() - cpu0
        self.excluded[1] += wall_now() - wall0
        if dev >= self.target:
            trainer.should_stop = True


def platform_run(cfg: DictConfig, module: FinetuneModule, datamodule: Any, s: Settings) -> list[Eval]:
    """The default config's trainer (no logger, checkpoints or progress bar) validating every `eval_every` steps."""
    clock = _EvalClock(f"val/{datamodule.task.metric}", s.target)
    with tempfile.TemporaryDirectory() as root:
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            logger=False,
            callbacks=[clock],
            enable_checkpointing=False,
            enable_progress_bar=False,
            val_check_interval=s.eval_every,
            check_val_every_n_epoch=None,  # count the interval in global steps, as the loop does
            default_root_dir=root,
        )
        torch.manual_seed(cfg.seed)
        clock.begin()
        trainer.fit(module, datamodule=datamodule)
        stopped = clock.history and clock.history[-1].dev >= s.target
        if not stopped and (not clock.history or clock.history[-1].step != trainer.global_step):
            trainer.validate(module, datamodule=datamodule, verbose=False)  # the last step, like the loop
    return clock.history


def _pad_to_max(rows: list[dict], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """(B, max_length) batch: every row padded to the full length, whatever the longest row in the batch."""
    batch = {"labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}
    for key in (k for k in rows[0] if k != "labels"):
        out = torch.full((len(rows), length), pad_id if key == "input_ids" else 0, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r[key])] = torch.as_tensor(r[key], dtype=torch.long)
        batch[key] = out
    return {k: v.to(DEVICE) for k, v in batch.items()}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, rows: list[dict], batch_size: int, length: int, pad_id: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = _pad_to_max(rows[start : start + batch_size], length, pad_id)
        correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
    model.train()
    return correct / len(rows)


def loop_run(cfg: DictConfig, model: torch.nn.Module, datamodule: Any, s: Settings) -> list[Eval]:
    """The hand-written baseline: plain shuffle (seed + epoch), pad to max_length, AdamW + the same schedule."""
    rows, dev = datamodule.splits["train"], datamodule.splits["val"]
    batch_size, length, pad_id = datamodule.batch_size, datamodule.max_length, datamodule.tokenizer.pad_token_id
    epochs = int(cfg.trainer.max_epochs)
    total = epochs * math.ceil(len(rows) / batch_size)
    torch.manual_seed(cfg.seed)
    model = model.to(DEVICE).train()
    history: list[Eval] = []
    excluded = [0.0, 0.0]
    cpu0, wall0 = step_clock(), wall_now()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.method.optimizer)(params=params)
    scheduler = instantiate(cfg.method.scheduler)(optimizer, total_steps=total) if cfg.method.scheduler else None
    clip = cfg.method.get("grad_clip") or cfg.trainer.get("gradient_clip_val")
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(datamodule.seed + epoch)).tolist()
        for start in range(0, len(rows), batch_size):
            batch = _pad_to_max([rows[i] for i in order[start : start + batch_size]], length, pad_id)
            model(**batch).loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % s.eval_every == 0 or step == total:
                cpu, wall = step_clock(), wall_now()
                acc = _accuracy(model, dev, datamodule.eval_batch_size, length, pad_id)
                history.append(Eval(step, acc, cpu - cpu0 - excluded[0], wall - wall0 - excluded[1]))
                excluded[0] += step_clock() - cpu
                excluded[1] += wall_now() - wall
                if acc >= s.target:
                    return history
    return history


def first_at(history: list[Eval], target: float) -> Eval | None:
    """The first evaluation at or above `target`."""
    return next((e for e in history if e.dev >= target), None)


def settle_target(target: float, platform: list[Eval], loop: list[Eval]) -> float:
    """`target` when both runs reached it, else the best dev accuracy both reached (the lower of the two bests)."""
    if first_at(platform, target) and first_at(loop, target):
        return target
    return min(max(e.dev for e in platform), max(e.dev for e in loop))


def build(cfg: DictConfig) -> tuple[FinetuneModule, torch.nn.Module, Any]:
    """train.run's build order: seed, data, peft/init, backbone, wrap, method, optim; plus a copy for the loop."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if datamodule.task.metric != "accuracy" or not hasattr(datamodule, "splits"):
        raise bad_value("data", datamodule.task.name, "a GLUE classification task scored by accuracy (e.g. sst2)")
    spec, init = instantiate(cfg.peft), instantiate(cfg.init)
    backbone = instantiate(cfg.model, num_labels=datamodule.task.num_labels)
    model = wrap(backbone, spec, init, datamodule=datamodule)
    init.apply(model, datamodule=datamodule)
    twin = copy.deepcopy(model)
    module = instantiate(cfg.method, student=model, task=datamodule.task)
    if type(module) is not FinetuneModule:
        raise LabError(f"method={cfg.method._target_}: this benchmark compares method=finetune with its loop")
    if cfg.optim.get("precondition"):
        raise bad_value("optim.precondition", True, "false (the hand-written loop has no preconditioning)")
    instantiate(cfg.optim).attach(module)
    return module, twin, datamodule


def _summary(history: list[Eval], target: float) -> dict:
    hit = first_at(history, target)
    return {
        "steps": hit.step if hit else None,
        "cpu_s": round(hit.cpu_s, 2) if hit else None,
        "wall_s": round(hit.wall_s, 2) if hit else None,
        "dev_at_target": round(hit.dev, 4) if hit else None,
        "best_dev": round(max(e.dev for e in history), 4),
        "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(e).items()} for e in history],
    }


def main(out_dir: Path) -> dict:
    s = settings_from_env()
    cfg = compose_default(s)

    def measure() -> dict:
        module, twin, datamodule = build(cfg)
        start = time.perf_counter()
        platform = platform_run(cfg, module, datamodule, s)
        loop = loop_run(cfg, twin, datamodule, s)
        target = settle_target(s.target, platform, loop)
        ours, base = _summary(platform, target), _summary(loop, target)
        return {
            "config": {
                "model": cfg.model.name_or_path,
                "task": datamodule.task.name,
                "train_rows": len(datamodule.splits["train"]),
                "dev_rows": len(datamodule.splits["val"]),
                "epochs": int(cfg.trainer.max_epochs),
                "batch_size": datamodule.batch_size,
                "max_length": datamodule.max_length,
                "group_by_length": getattr(datamodule, "group_by_length", None),
                "optimizer": dict(cfg.method.optimizer),
                "scheduler": dict(cfg.method.scheduler) if cfg.method.scheduler else None,
                "lora_r": cfg.peft.get("lora_r"),
                "eval_every": s.eval_every,
                "overrides": list(s.overrides),
            },
            "quick": s.quick,
            "target": s.target,
            "target_used": round(target, 4),
            "reached_target": {"platform": bool(first_at(platform, s.target)), "loop": bool(first_at(loop, s.target))},
            "platform": ours,
            "loop": base,
            "ratio": round(ours["cpu_s"] / base["cpu_s"], 4),
            "wall_ratio": round(ours["wall_s"] / base["wall_s"], 4),
            "bench_wall_s": round(time.perf_counter() - start, 1),
        }

    result = on_one_cpu_thread(measure)
    return {
        **result,
        "goal": "ratio <= 0.6 (training CPU time to the same dev accuracy, evaluation excluded; wall time on a GPU)",
        "clock": "process CPU seconds" if DEVICE.type == "cpu" else "wall seconds",
        "device": device_name(),
        "threads": 1 if DEVICE.type == "cpu" else torch.get_num_threads(),
    }


if __name__ == "__main__":
    run_alone("bench_time_to_accuracy", main)

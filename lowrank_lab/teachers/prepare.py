"""Teacher preparation: fully fine-tune a copy of the student's base on the task (method=finetune, peft=none),
score it on dev against the trivial baseline and save it (safetensors + teacher.json). Done once per cache key
(lowrank_lab.cache): parallel sweep jobs that need the same teacher wait on a file lock and then load it; a cached
teacher with a truncated json or weights file is prepared again."""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader

from lowrank_lab.cache import atomic_write, get_or_build
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.methods.lr_schedules import schedule
from lowrank_lab.metrics.baseline import learned, trivial_baseline
from lowrank_lab.teachers.settings import INFO_FILE, TeacherSettings

log = logging.getLogger(__name__)


def ensure_prepared(
    out: Path, base: torch.nn.Module, datamodule: Any, settings: TeacherSettings, trainer: dict, meta: dict
) -> dict[str, Any]:
    """The info of the teacher at `out`, preparing it first if missing or unreadable (under a lock: built once)."""
    build = lambda: prepare(out, base, datamodule, settings, trainer, meta)  # noqa: E731
    return get_or_build(out, build, load=_cached_info, what="teacher")


def _cached_info(out: Path) -> dict[str, Any]:
    """teacher.json of the teacher at `out`; raises if it or another json / safetensors file there is truncated."""
    from safetensors import safe_open

    for path in out.glob("*.json"):
        json.loads(path.read_text())
    for path in out.glob("*.safetensors"):
        with safe_open(str(path), "pt"):  # checks the header against the file's size
            pass
    info = json.loads((out / INFO_FILE).read_text())
    print(f"teacher: cached {out} (dev {info['metric']}={info['dev']:.4f})", file=sys.stderr, flush=True)
    return info


def _rebatch(loader: DataLoader, batch_size: int) -> DataLoader:
    """The same data, sampler and collation at the teacher recipe's batch size."""
    return DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=loader.sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


def majority_baseline(task: Any, datamodule: Any) -> float | None:
    """The task metric on dev of the task's trivial predictor (majority class, constant mean, unigram LM)."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    vocab = len(tokenizer) if tokenizer is not None else None
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    return trivial_baseline(task, train, val, vocab).get(task.metric)


def redraw_fresh(model: torch.nn.Module, names: list[str], seed: int) -> None:
    """Draw the parameters the checkpoint did not have (the task head) again from the teacher's own seed, so that
    one teacher serves every student seed: weights N(0, initializer_range²), vectors 1 (norms), biases 0."""
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    params, generator = dict(model.named_parameters()), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            p = params.get(name)
            if p is None:
                continue
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.dtype) * std)


def prepare(
    out: Path, base: torch.nn.Module, datamodule: Any, settings: TeacherSettings, trainer: dict, meta: dict
) -> dict[str, Any]:
    """Fine-tune every weight of a copy of `base` with AdamW + linear warm-up/decay; save to `out` atomically."""
    task, start = datamodule.task, time.perf_counter()
    scratch = out.with_name(f".{out.name}.fit-{os.getpid()}")  # Lightning's root dir; nothing in it is kept
    print(f"teacher: building {out} ({settings.recipe()})", file=sys.stderr, flush=True)
    with isolate_rng():  # the run's own random stream is the same whether the teacher was cached or built
        random.seed(settings.seed)
        np.random.seed(settings.seed)
        torch.manual_seed(settings.seed)
        model = copy.deepcopy(base).requires_grad_(True).train()
        redraw_fresh(model, list(meta.get("fresh", [])), settings.seed)  # not the student seed's head
        module = FinetuneModule(
            model,
            task,
            optimizer=partial(torch.optim.AdamW, lr=settings.lr, weight_decay=settings.weight_decay),
            scheduler=partial(schedule, name="linear", warmup_ratio=settings.warmup_ratio),
        )
        fit = L.Trainer(
            devices=1,
            max_epochs=settings.epochs,
            max_steps=settings.max_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=True,  # several minutes for a GLUE task on a CPU: show them
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(scratch),
            **trainer,
        )
        fit.fit(module, train_dataloaders=_rebatch(datamodule.train_dataloader(), settings.batch_size))
        dev = fit.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)[0][task.monitor]
        majority = majority_baseline(task, datamodule)  # a DataLoader iterator draws from the global RNG too
    info = {
        "metric": task.metric,
        "dev": float(dev),
        "majority": majority,
        "steps": int(fit.global_step),
        "train_seconds": round(time.perf_counter() - start, 1),
        **meta,
    }
    info["beats_majority"] = beats_baseline(task.metric, info["dev"], majority)
    shutil.rmtree(scratch, ignore_errors=True)

    def write(tmp: Path) -> None:
        model.cpu().save_pretrained(tmp)  # safetensors
        if getattr(datamodule, "tokenizer", None) is not None:
            datamodule.tokenizer.save_pretrained(tmp)  # the dir is a loadable model for method=kd elsewhere
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))

    atomic_write(out, write, directory=True)  # replaces an unreadable teacher there
    print(
        f"teacher: built {out} in {info['train_seconds']}s "
        f"(dev {task.metric}={info['dev']:.4f}, trivial baseline {'n/a' if majority is None else f'{majority:.4f}'})",
        file=sys.stderr,
        flush=True,
    )
    return info


def beats_baseline(metric: str, dev: float | None, baseline: float | None) -> bool | None:
    """Whether a teacher's dev score beats its baseline by the margin a job needs to count as learned."""
    if dev is None or baseline is None:
        return None
    task = TaskSpec(name="teacher", num_labels=0, metric=metric)
    return bool(learned(task, {metric: dev}, {metric: baseline})[0])


def check_quality(info: dict[str, Any], settings: TeacherSettings, where: str) -> None:
    """Refuse (require_better_than_majority, the default) or warn loudly when the teacher does not beat its
    baseline by the learned margin (metrics.baseline.MARGINS): distilling from it would teach nothing."""
    dev, majority, metric = info.get("dev"), info.get("majority"), info.get("metric")
    if beats_baseline(metric, dev, majority) in (None, True):
        return
    msg = (
        f"teacher {where}: dev {metric}={dev:.4f} does not beat its baseline {majority:.4f}; train a stronger one "
        "with method.teacher.lr=2e-4 method.teacher.epochs=8 (or more rows: data.train_limit=null), or use a task "
        "the model is strong on"
    )
    if settings.require_better_than_majority:
        raise LabError(f"{msg}; method.teacher.require_better_than_majority=false accepts it anyway")
    bar = "!" * 100
    print(f"{bar}\nWARNING: {msg}\n{bar}", file=sys.stderr, flush=True)
    log.warning(msg)

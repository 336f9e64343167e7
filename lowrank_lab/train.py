"""`run(cfg)`: the whole life of one job — validate, build, fit, test, save, track — in the order it runs."""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lowrank_lab.adapters import wrap
from lowrank_lab.adapters.rank import rank_facts, resolve_auto_rank
from lowrank_lab.callbacks.finite import StopOnNonFiniteLoss
from lowrank_lab.config_tree import print_config_tree
from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.methods.keys import method_key
from lowrank_lab.metrics.baseline import datamodule_baseline, learned
from lowrank_lab.summary import print_summary
from lowrank_lab.teachers.load import teacher_for_run
from lowrank_lab.tracking.loggers import build_loggers
from lowrank_lab.validate import check_resume, validate


def run(cfg: DictConfig) -> float | None:
    """Train and evaluate one configuration; return the sweep objective (`val/<task metric>`)."""
    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints its own lines once
    try:
        return _run(cfg)
    except SIGTERMException as stop:  # killed before fit (a teacher being built): exit 143 as a killed fit does
        raise SystemExit(143) from stop  # (Lightning's exception exits 0, and `make reproduce-*` would go on)
    except Exception as err:
        cause = err if isinstance(err, LabError) else err.__cause__  # Hydra wraps errors raised in _target_s
        if not isinstance(cause, LabError):
            raise
        print(f"error: {cause}", file=sys.stderr, flush=True)
        sys.exit(2)


def _job_context() -> tuple[Path, list[str], str]:
    """The Hydra job directory, this job's overrides and a readable run name."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    return Path(hc.runtime.output_dir), overrides, hc.job.override_dirname or hc.job.name


def resolve_checkpoint(ckpt_path: str | None, job_dir: Path) -> str | None:
    """`null`: resume from this job dir's last checkpoint if there is one; `last`: it must exist; else a path."""
    last = job_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None:
        return str(last) if last.exists() else None
    if ckpt_path == "last":
        if not last.exists():
            raise bad_value("ckpt_path", ckpt_path, f"no checkpoint at {last}; rerun in a job dir that has one")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise bad_value("ckpt_path", ckpt_path, "an existing .ckpt file, 'last', or null")
    try:
        torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)  # never unpickle a user's file
    except Exception as err:
        allowed = f"a readable Lightning checkpoint, tensors and plain values only ({type(err).__name__})"
        raise bad_value("ckpt_path", ckpt_path, allowed) from None
    return ckpt_path


def save_merged(student: torch.nn.Module, out: Path, tokenizer: Any = None) -> None:
    """`save.merged=true`: fold the adapters into the base (W + s·BA, last step of the run) and save a model that
    plain `transformers` loads (`AutoModelFor….from_pretrained(out)`), with the tokenizer when there is one."""
    from peft import PeftModel

    model = student.merge_and_unload() if isinstance(student, PeftModel) else student
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def _run(cfg: DictConfig) -> float | None:
    started = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    job_dir, overrides, run_name = _job_context()
    if rank_zero_only.rank == 0:
        print_config_tree(cfg)  # extras.print_config=false: off

    # 1. Everything that can be wrong with the config is found here, before training or tracking starts.
    datamodule = instantiate(cfg.data)
    validate(cfg, datamodule)  # model head vs task, learning rates, a method's epoch split
    datamodule.setup("fit")  # reads (and caches) the data now: a missing source fails before anything else
    report_split = "test" if cfg.get("test", True) else "val"
    baseline = datamodule_baseline(datamodule, report_split)  # the trivial predictor on the split we report
    spec, init = instantiate(cfg.peft), instantiate(cfg.init)
    ckpt = resolve_checkpoint(cfg.get("ckpt_path"), job_dir)
    if ckpt and cfg.get("ckpt_path") in (None, "last"):  # this job dir's own checkpoint: the same config only
        check_resume(cfg, job_dir)
    if ckpt:
        print(f"resuming from {ckpt}", file=sys.stderr, flush=True)
    backbone = instantiate(cfg.model, num_labels=datamodule.task.num_labels)
    base = copy.deepcopy(backbone.model) if backbone.random_init else None  # saved once every check passed
    teacher = teacher_for_run(cfg, backbone, datamodule, init)  # None unless method.teacher / init needs one
    spec = resolve_auto_rank(spec, init, teacher, datamodule)  # peft.lora_r=auto: init=spectral picks the ranks
    model = wrap(backbone, spec, init, datamodule=datamodule)  # data-aware inits (CorDA) do their pass here
    init.apply(model, datamodule=datamodule, teacher=teacher)
    with_teacher = {"teacher": teacher} if OmegaConf.select(cfg, f"{method_key(cfg)}.teacher") is not None else {}
    module = instantiate(cfg.method, student=model, task=datamodule.task, **with_teacher)
    if cfg.get("optim") is not None:  # optim=: preconditioning or peft's frozen-A optimizer around method.optimizer
        instantiate(cfg.optim).attach(module)
    if base is not None:  # a random-init base is part of the result (as initialised, before adapters and inits)
        base.save_pretrained(job_dir / "base")
        base = None

    # 2. Tracking: a child run of the sweep (or a plain run), reused when this job dir is resumed.
    #    Under DDP only rank 0 has a run: Lightning re-runs this script for ranks > 0 with LOCAL_RANK set (SLURM
    #    starts them with SLURM_PROCID), rank_zero_only.rank reads those, and their loggers stay no-ops.
    run_id = None
    if cfg.logger.get("tracking_uri"):
        from mlflow.tracking import MlflowClient

        from lowrank_lab.tracking.job import log_facts, start_job_run

        if rank_zero_only.rank == 0:
            run_id = start_job_run(cfg, job_dir, overrides, run_name, datamodule=datamodule)
            log_facts(cfg.logger.tracking_uri, run_id, {f"baseline/{k}": v for k, v in baseline.items()})
            if teacher is not None and teacher.info.get("dev") is not None:
                scores = {f"teacher/{teacher.info['metric']}": teacher.info["dev"]}
                log_facts(cfg.logger.tracking_uri, run_id, scores | {"teacher/baseline": teacher.info.get("majority")})
            rank_metrics, rank_params = rank_facts(spec, model)  # peft.lora_r=auto: what it picked
            log_facts(cfg.logger.tracking_uri, run_id, rank_metrics)
            for key, value in rank_params.items():
                MlflowClient(cfg.logger.tracking_uri).log_param(run_id, key, value)
    loggers = build_loggers(cfg.logger, run_id)  # logger=: a Lightning logger's _target_ (mlflow: the job's run)
    (job_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    # 3. Fit, test, save the adapter.
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    callbacks.append(StopOnNonFiniteLoss())  # a diverged job fails; it never reports a metric
    if not loggers:  # the LR monitor has nothing to write to without a logger (and Lightning refuses it)
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    status = "FAILED"
    try:  # from here on the run is closed whatever happens (a Trainer that cannot be built: FAILED)
        trainer: L.Trainer = instantiate(
            cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(job_dir)
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        test = trainer.test(module, datamodule=datamodule, verbose=False)[0] if cfg.get("test", True) else {}
        reported = {k.split("/", 1)[1]: float(v) for k, v in (test or val).items() if k.startswith(f"{report_split}/")}
        did_learn, why = learned(datamodule.task, reported, baseline)
        if run_id is not None:
            log_facts(cfg.logger.tracking_uri, run_id, {}, {"lowrank_lab.learned": str(did_learn).lower()})
        adapter_dir = job_dir / "adapter"
        if trainer.is_global_zero:  # a method that trains several encoders (SLAD) saves them all
            module.save_adapters(adapter_dir)
            init.save(module.student, adapter_dir)  # what the init changed in the base (init=gradient: s·B₀A₀)
            if OmegaConf.select(cfg, "save.merged", default=False):
                save_merged(module.student, job_dir / "merged", getattr(datamodule, "tokenizer", None))
        status = "FINISHED"
    except SIGTERMException as stop:  # killed (kill, scancel): Lightning exits with code None, i.e. 0; say 128 + 15
        raise SystemExit(143) from stop
    except SystemExit as stop:  # requeued after a checkpoint (callbacks.requeue.Requeued): the run goes on later
        status = getattr(stop, "run_status", status)
        raise
    finally:
        if run_id is not None:
            from lowrank_lab.tracking.job import add_job_seconds, finish_job_run

            job_s = add_job_seconds(job_dir, time.perf_counter() - started)  # every attempt, not the waits between
            finish_job_run(cfg.logger.tracking_uri, run_id, job_dir, status, {"time/job_s": job_s})

    objective = val.get(datamodule.task.monitor)
    same_split = not getattr(datamodule, "heldout_fraction", 0)  # val and test are both the labelled dev split
    shown = test if (test and same_split) else {**val, **test}
    base = {f"{report_split}/{k}": v for k, v in baseline.items()}
    print_summary(datamodule.task, shown, base, run_id, cfg.logger.get("tracking_uri"), adapter_dir)
    if did_learn is False:
        print(f"WARNING: this job did not learn: {why}", file=sys.stderr, flush=True)
    return objective

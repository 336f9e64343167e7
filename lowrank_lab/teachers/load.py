"""The run's teacher, resolved from `method.teacher` before the student is wrapped:

- `name_or_path: null` — the student's base fully fine-tuned on the task (SAD's teacher: ΔW_T = W_T − W_base per
  adapted matrix), prepared once by teachers.prepare and cached under `<cache_dir>/<key>`, key = model + base
  weights + data (+ limits) + seed + recipe;
- a saved fine-tuned model dir (KD): any model with the student's label space and tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.methods.keys import method_key
from lowrank_lab.models.backbone import HEADS, resolve_name_or_path
from lowrank_lab.teachers.module import Teacher
from lowrank_lab.teachers.prepare import check_quality, ensure_prepared
from lowrank_lab.teachers.settings import (
    INFO_FILE,
    SAD_MISMATCH,
    TeacherSettings,
    data_key,
    digest,
    fingerprint,
    settings_from,
)


def adapted_module_names(model: nn.Module, spec: Any, backbone: Any) -> list[str]:
    """Names of the 2-D-weight modules the adapter `spec` (`peft=`) wraps in `model`, by peft's own matching."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    config = spec.build(backbone.head, backbone.lora_targets, {})
    if config is None:  # peft=none: no adapter, no per-layer teacher update
        return []
    config = _maybe_include_all_linear_layers(config, model)
    names = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name and isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding):
            if check_target_module_exists(config, name):
                names.append(name)
    return names


def weight_delta(teacher: nn.Module, base: nn.Module, names: list[str]) -> dict[str, torch.Tensor] | None:
    """ΔW_T = W_T − W_base (float32, CPU) for `names`, or None if the teacher lacks one or its shape differs."""
    delta = {}
    for name in names:
        try:
            w_t, w_0 = teacher.get_submodule(name).weight, base.get_submodule(name).weight
        except AttributeError:
            return None
        if w_t.shape != w_0.shape:
            return None
        delta[name] = (w_t.detach().float().cpu() - w_0.detach().float().cpu()).contiguous()
    return delta or None


def _same_base(delta: dict[str, torch.Tensor], base: nn.Module, info: dict[str, Any]) -> bool:
    """Recorded base fingerprint when the teacher has one; else a fine-tune moves weights by ‖ΔW‖ < ‖W_base‖,
    while an unrelated model of the same shape sits ≈ √2·‖W‖ away."""
    weights = {n: base.get_submodule(n).weight for n in delta}
    if "target_fingerprint" in info:
        return info["target_fingerprint"] == fingerprint(weights)
    ratio = sum(float(d.norm()) for d in delta.values()) / max(1e-12, sum(float(w.norm()) for w in weights.values()))
    return ratio < 1.0


def teacher_for_run(cfg: DictConfig, backbone: Any, datamodule: Any, init: Any = None) -> Teacher | None:
    """The run's teacher (None unless `method.teacher` is set or `init` needs one); call before wrapping."""
    needs_init = bool(getattr(init, "needs_teacher", False))
    if OmegaConf.select(cfg, f"{method_key(cfg)}.teacher") is None and not needs_init:
        return None
    from hydra.utils import instantiate

    settings = settings_from(cfg)
    sad = needs_init or settings.weight_delta  # declared by the method's config (method/sad.yaml) or the init
    names = adapted_module_names(backbone.model, instantiate(cfg.peft), backbone)
    if sad and not names:
        raise bad_value(
            "peft", cfg.peft.get("_target_"), "a LoRA adapter (e.g. peft=lora) for method=sad / init=spectral"
        )
    if settings.name_or_path:
        return _saved_teacher(settings, backbone, datamodule.task, names, sad, data_key(cfg))
    return _prepared_teacher(settings, cfg, backbone, datamodule, names)


def _load_model(backbone: Any, path: str, key: str) -> nn.Module:
    try:
        return HEADS[backbone.head].loader.from_pretrained(path)
    except Exception as err:
        raise bad_value(key, path, f"a saved {backbone.head} model ({type(err).__name__}: {err})") from None


def _prepared_teacher(
    settings: TeacherSettings, cfg: DictConfig, backbone: Any, datamodule: Any, names: list[str]
) -> Teacher:
    base, task = backbone.model, datamodule.task
    model_id = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    fresh = list(getattr(backbone, "fresh", []))  # the task head: redrawn from the teacher's seed, not in the key
    meta = {
        "model": model_id,
        "base": fingerprint({k: v for k, v in base.state_dict().items() if k not in fresh}),
        "fresh": fresh,
        "target_fingerprint": fingerprint({n: base.get_submodule(n).weight for n in names}),
        "data": data_key(cfg),
        "recipe": settings.recipe(),
    }
    slug = re.sub(r"[^A-Za-z0-9]+", "_", str(model_id.get("name_or_path", "model")).removeprefix("pkg:")).strip("_")
    slug = slug[-40:] + ("_random" if model_id.get("random_init") else "")
    key = f"{slug}-{task.name}-{digest({k: meta[k] for k in ('model', 'base', 'data', 'recipe')})}"
    out = Path(settings.cache_dir) / key
    trainer = {k: OmegaConf.select(cfg, f"trainer.{k}") for k in ("accelerator", "precision", "deterministic")}
    info = ensure_prepared(out, base, datamodule, settings, {k: v for k, v in trainer.items() if v is not None}, meta)
    check_quality(info, settings, str(out))
    model = _load_model(backbone, str(out), "method.teacher.cache_dir")
    delta = weight_delta(model, base, names)
    return Teacher(model, key, delta, info, meta["data"], settings.cache_dir)


def _saved_teacher(
    settings: TeacherSettings, backbone: Any, task: Any, names: list[str], sad: bool, data: dict[str, Any]
) -> Teacher:
    key = "method.teacher.name_or_path"
    path = resolve_name_or_path(settings.name_or_path, key=key)
    model = _load_model(backbone, path, key)
    if not task.generative and model.config.num_labels != task.num_labels:  # an LM's labels are its vocab
        raise bad_value(
            key,
            settings.name_or_path,
            f"has {model.config.num_labels} labels but {task.name} has {task.num_labels}; a KD teacher must "
            "share the student's label space",
        )
    student_vocab = getattr(backbone.model.config, "vocab_size", None)
    if getattr(model.config, "vocab_size", None) != student_vocab:
        raise bad_value(
            key,
            settings.name_or_path,
            f"vocab size {model.config.vocab_size} != the student's {student_vocab}; "
            "a teacher must share the student's tokenizer",
        )
    info_file = Path(path) / INFO_FILE
    try:
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
    except (OSError, ValueError) as err:  # a truncated teacher.json: not ours to rebuild
        raise bad_value(key, settings.name_or_path, f"a readable {INFO_FILE} ({type(err).__name__}: {err})") from None
    delta = weight_delta(model, backbone.model, names)
    if delta is not None and not _same_base(delta, backbone.model, info):
        delta = None
    if sad and delta is None:
        raise LabError(SAD_MISMATCH)
    check_quality(info, settings, path)
    stamp = [str(p.stat().st_mtime_ns) for p in sorted(Path(path).glob("*.safetensors"))]
    return Teacher(model, f"saved-{digest([str(Path(path).resolve()), stamp])}", delta, info, data, settings.cache_dir)

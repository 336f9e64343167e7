"""Teachers for distillation, resolved from `method.teacher`:

- `name_or_path: null` — the student's base fully fine-tuned on the task (SAD's teacher: ΔW_T = W_T − W_base per
  adapted matrix), prepared once by `lowrank_lab.teachers.ensure_prepared` and cached under
  `<cache_dir>/<key>`, key = model + base weights + data (+ limits) + seed + recipe.
- a saved fine-tuned model dir (KD): any model with the student's label space and tokenizer.

A Teacher is frozen, always in eval mode and runs under no_grad; its spectral targets are cached next to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowrank_lab.errors import LabError, bad_value

SAD_MISMATCH = "SAD needs a teacher fine-tuned from the student's base; use method=kd for a different teacher"
INFO_FILE = "teacher.json"


@dataclass
class TeacherSettings:
    """`method.teacher`: where the teacher comes from and the recipe that prepares it (full fine-tuning)."""

    name_or_path: str | None = None
    cache_dir: str | None = None
    seed: int = 0
    lr: float = 1.0e-4
    epochs: int = 5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_steps: int = -1
    require_better_than_majority: bool = True

    def recipe(self) -> dict[str, Any]:
        """The fields that change the prepared weights (part of the cache key)."""
        skip = {"name_or_path", "cache_dir", "require_better_than_majority"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of names, shapes, dtypes and bytes of `tensors` (order independent)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


class Teacher(nn.Module):
    """A frozen teacher model. delta: ΔW_T (d_out, d_in) per target module when it was fine-tuned from the
    student's base (SAD-style), else None."""

    def __init__(
        self,
        model: nn.Module,
        key: str = "teacher",
        delta: dict[str, torch.Tensor] | None = None,
        info: dict[str, Any] | None = None,
        data_key: Any = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.key, self.delta, self.info, self.data_key = key, delta, dict(info or {}), data_key
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.last_targets_path: Path | None = None
        self._targets: dict[tuple[int, int], dict[str, dict[str, torch.Tensor]]] = {}

    @property
    def sad_style(self) -> bool:
        return bool(self.delta)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # Lightning's .train() never turns dropout on in the teacher

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor], hidden: bool = False) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs, output_hidden_states=hidden) if hidden else self.model(**inputs)

    def targets(self, datamodule: Any, rank: int, n_calib: int) -> dict[str, dict[str, torch.Tensor]]:
        """name -> {u_target, sigma_weighted, sigma_target} from `n_calib` tokens of the task's training data;
        memoised, and cached on disk by teacher + data + rank + n_calib."""
        if not self.sad_style:
            raise LabError(SAD_MISMATCH)
        if (rank, n_calib) in self._targets:
            return self._targets[(rank, n_calib)]
        path = None
        if self.cache_dir is not None:
            tag = digest([self.data_key, sorted(self.delta)], 10)
            path = self.cache_dir / "targets" / f"{self.key}-r{rank}-n{n_calib}-{tag}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
        from lowrank_lab.spectral.extract import load_targets, save_targets

        with FileLock(str(path) + ".lock") if path else contextlib.nullcontext():
            result = load_targets(path) if path and path.exists() else None
            if result is None:
                result = self._extract(datamodule, rank, n_calib)
                if path is not None:
                    save_targets(result, path)
        self._targets[(rank, n_calib)] = result
        self.last_targets_path = path
        return result

    def _extract(self, datamodule: Any, rank: int, n_calib: int) -> dict[str, dict[str, torch.Tensor]]:
        from lightning.pytorch.utilities.seed import isolate_rng

        from lowrank_lab.spectral.calibrate import collect_inputs
        from lowrank_lab.spectral.extract import spectral_targets

        modules = {name: self.model.get_submodule(name) for name in self.delta}
        device = next(self.model.parameters()).device
        widest = max(dw.shape[1] for dw in self.delta.values())
        with isolate_rng():  # the DataLoader iterator draws a seed: same run stream with or without the cache
            stats = collect_inputs(
                modules,
                lambda b: self.model(**{k: v.to(device) for k, v in b.items() if k != "labels"}),
                datamodule.train_dataloader(),
                n_calib,
                keep_rows=n_calib <= 4 * widest,  # rows are few: exact implicit / QR route; else the Gram
            )
        return spectral_targets(self.delta, stats, rank)


# ----- resolving `method.teacher` for a run ---------------------------------------------------------------------
def target_names(model: nn.Module, spec: Any, backbone: Any) -> list[str]:
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


def data_key(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the training data (not its batching or location on disk)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    skip = {"_target_", "batch_size", "eval_batch_size", "num_workers", "data_dir"}
    return {k: v for k, v in data.items() if k not in skip}


def settings_from(cfg: DictConfig) -> TeacherSettings:
    spec = OmegaConf.select(cfg, "method.teacher")
    values = OmegaConf.to_container(spec, resolve=True) if spec is not None else {}
    known = {f.name for f in fields(TeacherSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise bad_value(f"method.teacher.{unknown[0]}", values[unknown[0]], f"one of {sorted(known)}")
    settings = TeacherSettings(**values)
    settings.cache_dir = settings.cache_dir or str(Path(cfg.paths.output_dir) / "teachers")
    return settings


def teacher_for_run(cfg: DictConfig, backbone: Any, datamodule: Any, init: Any = None) -> Teacher | None:
    """The run's teacher (None unless `method.teacher` is set or `init` needs one); call before wrapping."""
    needs_init = bool(getattr(init, "needs_teacher", False))
    if OmegaConf.select(cfg, "method.teacher") is None and not needs_init:
        return None
    from hydra.utils import get_class, instantiate

    settings = settings_from(cfg)
    sad = needs_init or bool(getattr(get_class(cfg.method._target_), "needs_sad_teacher", False))
    names = target_names(backbone.model, instantiate(cfg.peft), backbone)
    if sad and not names:
        raise bad_value(
            "peft", cfg.peft.get("_target_"), "a LoRA adapter (e.g. peft=lora) for method=sad / init=spectral"
        )
    if settings.name_or_path:
        return _saved_teacher(settings, backbone, datamodule.task, names, sad, data_key(cfg))
    return _prepared_teacher(settings, cfg, backbone, datamodule, names)


def _load_model(backbone: Any, path: str, key: str) -> nn.Module:
    from lowrank_lab.models.backbone import HEADS

    try:
        return HEADS[backbone.head].loader.from_pretrained(path)
    except Exception as err:
        raise bad_value(key, path, f"a saved {backbone.head} model ({type(err).__name__}: {err})") from None


def _prepared_teacher(
    settings: TeacherSettings, cfg: DictConfig, backbone: Any, datamodule: Any, names: list[str]
) -> Teacher:
    from lowrank_lab.teachers import check_quality, ensure_prepared

    base, task = backbone.model, datamodule.task
    model_id = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    meta = {
        "model": model_id,
        "base": fingerprint(base.state_dict()),
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
    from lowrank_lab.models.resolve import resolve_name_or_path

    key = "method.teacher.name_or_path"
    path = resolve_name_or_path(settings.name_or_path, key=key)
    model = _load_model(backbone, path, key)
    if task.kind != "causal_lm" and model.config.num_labels != task.num_labels:  # an LM's labels are its vocab
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
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    delta = weight_delta(model, backbone.model, names)
    if delta is not None and not _same_base(delta, backbone.model, info):
        delta = None
    if sad and delta is None:
        raise LabError(SAD_MISMATCH)
    from lowrank_lab.teachers import check_quality

    check_quality(info, settings, path)
    stamp = [str(p.stat().st_mtime_ns) for p in sorted(Path(path).glob("*.safetensors"))]
    return Teacher(model, f"saved-{digest([str(Path(path).resolve()), stamp])}", delta, info, data, settings.cache_dir)

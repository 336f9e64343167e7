"""Load the student backbone named by `cfg.model`: pretrained weights (packaged, converted, pre-trained here, local,
hub cache) or a tiny random-init config, with the head the task needs; optionally a student derived from it (fewer
layers, models.surgery) and the `model.teacher` sub-node of a pair (loaded by lowrank_lab.teachers.pair)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from lowrank_lab.errors import bad_value
from lowrank_lab.models.convert import converted
from lowrank_lab.models.pretrain import pretrained
from lowrank_lab.models.resolve import locate
from lowrank_lab.models.segmentation import ViTForPatchSegmentation
from lowrank_lab.models.surgery import derive_student

SCHEMES = {"convert:": converted, "pretrain:": pretrained}  # folders built once here, then cached


def resolve_name_or_path(name_or_path: str, key: str = "model.name_or_path") -> str:
    """A local directory for `name_or_path`: `convert:<name>` (packaged weights converted once, models.convert),
    `pretrain:<name>` (a base pre-trained once, models.pretrain), else `pkg:…`, a path or a cached hub id
    (models.resolve); fails fast with one line when unreachable."""
    for prefix, build in SCHEMES.items():
        if name_or_path.startswith(prefix):
            return str(build(name_or_path[len(prefix) :]))
    return locate(name_or_path, key)


@dataclass(frozen=True)
class Head:
    """How to build a model with one kind of task head."""

    loader: Any  # has from_config(config, dtype=) and from_pretrained(path, config=, dtype=)
    labelled: bool  # the head is sized by num_labels
    text: bool = True  # inputs come from a tokenizer
    modules_to_save: tuple[str, ...] = ()  # head modules peft cannot infer without a task type


HEADS: dict[str, Head] = {
    "seq_cls": Head(AutoModelForSequenceClassification, labelled=True),
    "causal_lm": Head(AutoModelForCausalLM, labelled=False),
    "image_cls": Head(AutoModelForImageClassification, labelled=True, text=False, modules_to_save=("classifier",)),
    "image_seg": Head(ViTForPatchSegmentation, labelled=True, text=False, modules_to_save=("decode_head",)),
}


@dataclass
class Backbone:
    """A loaded model plus what later stages need to know about it."""

    model: PreTrainedModel
    name_or_path: str
    tokenizer: str | None
    head: str
    random_init: bool
    lora_targets: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)  # trained in full next to the adapter (vision heads)
    teacher: dict[str, Any] | None = None  # the `model.teacher` sub-node: lowrank_lab.teachers.pair loads it
    image_size: int | None = None
    fresh: list[str] = field(default_factory=list)  # parameters not in the checkpoint: initialised from the seed


def _vocab_overrides(tokenizer: str) -> dict[str, Any]:
    """vocab size and special ids of `tokenizer`, for a random-init causal LM that must match it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_name_or_path(tokenizer, key="model.tokenizer"))
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    ids["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return ids


def _plain(node: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _config(name_or_path: str, random_init: bool, overrides: dict[str, Any]) -> tuple[PretrainedConfig, str | None]:
    """(config, weights path): `config:<model_type>` builds a fresh config (random init only), else it is read."""
    if name_or_path.startswith("config:"):
        if not random_init:
            raise bad_value("model.random_init", random_init, f"true for {name_or_path!r} (a config has no weights)")
        return AutoConfig.for_model(name_or_path[len("config:") :], **overrides), None
    path = resolve_name_or_path(name_or_path)
    return AutoConfig.from_pretrained(path, **overrides), path


def load_backbone(
    name_or_path: str,
    head: str = "seq_cls",
    num_labels: int = 2,
    tokenizer: str | None = None,
    random_init: bool = False,
    config_overrides: dict[str, Any] | None = None,
    lora_targets: list[str] | None = None,
    dtype: str | None = None,
    modules_to_save: list[str] | None = None,
    image_size: int | None = None,
    teacher: dict[str, Any] | None = None,
    student: dict[str, Any] | None = None,
) -> Backbone:
    """Build the backbone; `random_init` builds the architecture from its config (seeded by the caller).
    `student.keep_layers` keeps those blocks of the loaded model (a student derived from the teacher's weights)."""
    if head not in HEADS:
        raise bad_value("model.head", head, f"one of {sorted(HEADS)}")
    spec = HEADS[head]
    tokenizer = (tokenizer or name_or_path) if spec.text else None
    overrides = dict(config_overrides or {})
    if image_size is not None:
        overrides["image_size"] = image_size
    if random_init and head == "causal_lm":
        overrides = {**_vocab_overrides(tokenizer), **overrides}
    if spec.labelled:
        overrides["num_labels"] = num_labels
    config, path = _config(name_or_path, random_init, overrides)
    torch_dtype = getattr(torch, dtype) if dtype else None
    fresh: list[str] = []
    if random_init:
        model = spec.loader.from_config(config, dtype=torch_dtype)
    else:
        # a hub image classifier's head (e.g. 1000 ImageNet classes) is re-initialised at the task's size
        reinit = {"ignore_mismatched_sizes": True} if not spec.text else {}
        model, info = spec.loader.from_pretrained(
            path, config=config, dtype=torch_dtype, output_loading_info=True, **reinit
        )
        mismatched = [m[0] if isinstance(m, tuple | list) else m for m in info.get("mismatched_keys", [])]
        fresh = sorted(set(info.get("missing_keys", [])) | set(mismatched))
    if head == "seq_cls" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    if student and student.get("keep_layers") is not None:
        model = derive_student(model, list(student["keep_layers"]))
    return Backbone(
        model=model,
        name_or_path=name_or_path,
        tokenizer=tokenizer,
        head=head,
        random_init=random_init,
        lora_targets=list(lora_targets or []),
        modules_to_save=list(modules_to_save if modules_to_save is not None else spec.modules_to_save),
        teacher=_plain(teacher) if teacher else None,
        image_size=image_size,
        fresh=fresh,
    )

"""What a method needs to know about the task a datamodule serves: label space and how it is scored."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lowrank_lab.errors import bad_value

ANSWER = re.compile(r"####\s*(.+)")


def final_answer(text: str) -> str | None:
    """The normalised `#### <answer>` of a response (commas, `$` and a trailing period dropped), or None."""
    match = ANSWER.search(text)
    return None if match is None else match.group(1).strip().replace(",", "").replace("$", "").rstrip(".")


@dataclass(frozen=True)
class GenerationProbe:
    """A few held-out prompts and their reference answers (`#### <answer>`), scored by exact match of greedy
    generations; kept small because generation is slow."""

    prompts: tuple[tuple[int, ...], ...]
    answers: tuple[str, ...]
    decode: Callable[[list[int]], str]
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    max_new_tokens: int = 64


@dataclass(frozen=True)
class TaskKind:
    """What a task kind means wherever the code must treat kinds differently (the one registry: KINDS)."""

    description: str  # for messages: what data of this kind is
    generative: bool = False  # labels are the next tokens (the vocabulary), per token; no classification head
    dense: bool = False  # one label per pixel (segmentation): logits (B, C, H, W)


KINDS: dict[str, TaskKind] = {  # TaskSpec.kind -> TaskKind; a model serves a task when model.head == task.kind
    "seq_cls": TaskKind("text classification/regression"),
    "causal_lm": TaskKind("causal-LM text", generative=True),
    "image_cls": TaskKind("image classification"),
    "image_seg": TaskKind("image segmentation", dense=True),
}


class TaskSpec:
    """Label space and metrics of a task. `metric` is the one reported and used as the sweep objective.
    Immutable; deliberately not a dataclass: Hydra's `instantiate` would turn a dataclass kwarg into a DictConfig."""

    FIELDS = ("name", "num_labels", "metric", "metrics", "regression", "kind", "probe")
    __slots__ = FIELDS

    def __init__(
        self,
        name: str,
        num_labels: int,
        metric: str,
        metrics: tuple[str, ...] = (),
        regression: bool = False,
        kind: str = "seq_cls",  # a key of KINDS
        probe: GenerationProbe | None = None,  # causal_lm: exact match of greedy generations
    ) -> None:
        if kind not in KINDS:
            raise bad_value("task kind", kind, f"one of {', '.join(KINDS)}")
        values = (name, num_labels, metric, tuple(metrics), regression, kind, probe)
        for key, value in zip(self.FIELDS, values):
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"TaskSpec is immutable; use .replace({key}=...)")

    def __reduce__(self) -> tuple:  # pickling and deepcopy go through __init__
        return (TaskSpec, tuple(getattr(self, k) for k in self.FIELDS))

    def replace(self, **changes: object) -> TaskSpec:
        return TaskSpec(**{**{k: getattr(self, k) for k in self.FIELDS}, **changes})

    def _key(self) -> tuple:
        return tuple(getattr(self, k) for k in self.FIELDS if k != "probe")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "TaskSpec(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.FIELDS if k != "probe") + ")"

    @property
    def generative(self) -> bool:
        """Labels are next tokens (KINDS[kind].generative): per-token losses, the vocabulary as label space."""
        return KINDS[self.kind].generative

    @property
    def dense(self) -> bool:
        """One label per pixel (KINDS[kind].dense)."""
        return KINDS[self.kind].dense

    @property
    def monitor(self) -> str:
        return f"val/{self.metric}"

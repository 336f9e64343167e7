"""What a method needs to know about the task a datamodule serves: label space and how it is scored."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

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
        kind: str = "seq_cls",  # seq_cls | causal_lm | image_cls | image_seg
        probe: GenerationProbe | None = None,  # causal_lm: exact match of greedy generations
    ) -> None:
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
    def monitor(self) -> str:
        return f"val/{self.metric}"

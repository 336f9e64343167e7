"""What a method needs to know about the task a datamodule serves: label space and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskSpec:
    """Label space and metrics of a task. `metric` is the one reported and used as the sweep objective."""

    name: str
    num_labels: int
    metric: str
    metrics: tuple[str, ...] = field(default=())
    regression: bool = False
    kind: str = "seq_cls"  # seq_cls | causal_lm | image_cls | image_seg

    @property
    def monitor(self) -> str:
        return f"val/{self.metric}"

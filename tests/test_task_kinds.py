"""Task kinds dispatch through one registry (lowrank_lab.data.task.KINDS): every per-kind table covers exactly its
kinds, the kind's flags agree with what the tables do with it, and an unknown kind stops with one line."""

from __future__ import annotations

import pytest

from lowrank_lab.data.task import KINDS, TaskSpec
from lowrank_lab.errors import LabError
from lowrank_lab.metrics.baseline import BASELINES
from lowrank_lab.metrics.evaluators import EVALUATORS
from lowrank_lab.metrics.task_scores import BUILDERS
from lowrank_lab.models.backbone import HEADS


@pytest.mark.parametrize(
    "table", [BASELINES, EVALUATORS, BUILDERS, HEADS], ids=["baselines", "eval", "metrics", "heads"]
)
def test_every_per_kind_table_covers_the_registry(table: dict) -> None:
    assert set(table) == set(KINDS)


def test_flags_follow_the_kind() -> None:
    lm = TaskSpec("gsm8k", 0, "perplexity", ("perplexity",), kind="causal_lm")
    seg = TaskSpec("digits_seg", 11, "miou", ("miou",), kind="image_seg")
    cls = TaskSpec("sst2", 2, "accuracy", ("accuracy",))
    assert (lm.generative, lm.dense) == (True, False) and (seg.generative, seg.dense) == (False, True)
    assert (cls.generative, cls.dense) == (False, False)
    assert not HEADS["causal_lm"].labelled and all(HEADS[k].labelled for k in KINDS if not KINDS[k].generative)


def test_an_unknown_kind_stops_with_one_line() -> None:
    with pytest.raises(LabError, match="task kind") as err:
        TaskSpec("x", 2, "accuracy", kind="tabular")
    assert "\n" not in str(err.value) and "seq_cls" in str(err.value)

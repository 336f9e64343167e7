"""The teacher of a model pair: the `model.teacher` sub-node of a pair config (conf/model/*pair*, *-half), loaded
as a trainable Backbone with the student's head and checked against the student (models.pairs.check_pair). SLAD
trains it jointly with the student; KD / SAD's frozen teacher comes from `method.teacher` (teachers.load)."""

from __future__ import annotations

from lowrank_lab.errors import bad_value
from lowrank_lab.models.backbone import Backbone, load_backbone
from lowrank_lab.models.pairs import check_pair


def load_pair_teacher(student: Backbone, num_labels: int) -> Backbone:
    """Load the teacher named by the `model.teacher` sub-node (defaults: the student's head) and check the pair."""
    if not student.teacher:
        raise bad_value("model.teacher", None, "a sub-node with the teacher's name_or_path (see conf/model/*pair*)")
    spec = {"head": student.head, **dict(student.teacher)}
    teacher = load_backbone(**spec, num_labels=num_labels)
    check_pair(teacher, student)
    return teacher

"""Teacher / student pairs: the check that two backbones can be distilled one into the other (same tokenizer
vocabulary, same label space). Loading a pair's teacher is lowrank_lab.teachers.pair's job."""

from __future__ import annotations

from lowrank_lab.errors import LabError
from lowrank_lab.models.backbone import Backbone, resolve_name_or_path


def _vocab(backbone: Backbone) -> dict[str, int] | None:
    from transformers import AutoTokenizer

    if backbone.tokenizer is None:
        return None  # vision: no tokenizer
    return AutoTokenizer.from_pretrained(resolve_name_or_path(backbone.tokenizer, "model.tokenizer")).get_vocab()


def _label_space(backbone: Backbone) -> tuple[str, int]:
    """(head, size of what the head predicts): vocabulary size for causal LMs, num_labels otherwise."""
    config = backbone.model.config
    size = config.vocab_size if backbone.head == "causal_lm" else config.num_labels
    return backbone.head, int(size)


def check_pair(teacher: Backbone, student: Backbone) -> None:
    """A pair can be distilled only with the same tokenizer vocabulary and the same label space; else one line."""
    if _label_space(teacher) != _label_space(student):
        raise LabError(
            f"model.teacher={teacher.name_or_path!r}: label space (head, size) {_label_space(teacher)} differs from "
            f"the student's {_label_space(student)}; pick a teacher with the student's head and labels"
        )
    if teacher.tokenizer != student.tokenizer and _vocab(teacher) != _vocab(student):
        raise LabError(
            f"model.teacher={teacher.name_or_path!r}: tokenizer {teacher.tokenizer!r} has a different vocabulary "
            f"from the student's {student.tokenizer!r}; pick a teacher of the same family"
        )

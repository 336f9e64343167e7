"""Everything about a teacher, one module per step:

- settings: `method.teacher` (TeacherSettings) and the cache keys;
- module:   the frozen Teacher a distillation method holds (eval mode, no_grad, ΔW_T when SAD-style);
- prepare:  fine-tune the student's base on the task once, score it, cache it (file lock);
- load:     the run's teacher from `method.teacher` (prepared or a saved dir), `teacher_for_run`;
- targets:  the spectral-target cache (SAD's u_target, σ̃ per layer; the math is in lowrank_lab.spectral);
- logits:   the teacher's logits over the training set, cached (logit KD without a teacher forward per step);
- pair:     the `model.teacher` sub-node of a model pair (SLAD's jointly trained teacher);
- cli:      `python -m lowrank_lab.teachers prepare|targets …`.

Only the leaves are re-exported here, so importing one module never pulls in methods/ (teachers.prepare does).
"""

from lowrank_lab.teachers.module import Teacher
from lowrank_lab.teachers.settings import TeacherSettings

__all__ = ["Teacher", "TeacherSettings"]

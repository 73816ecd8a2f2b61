"""Does the teacher agree with the student where a distillation term reads one on the other's terms?

Some teacher outputs are only meaningful in the student's frame: every term compares maps of the
images the student's loader decoded ("features"), the teacher's RPN deltas are read on the
*student's* anchors ("rpn"), its box head runs on the student's sampled RoIs ("roi") and its box
deltas are decoded with the student's box coding ("box_deltas"). This module is the one place
that decides: :func:`teacher_student_mismatches` lists the config keys whose values differ between
the two configs, each marked with whether a term of the run reads it; :func:`check_teacher`
raises :class:`TeacherMismatchError` on those read. The distiller calls it when it is built, so
a run never starts with such a teacher; the doctor reports the others.
"""
from dataclasses import dataclass
from typing import Any, FrozenSet, Iterable, List, Sequence

from detectron2.config import CfgNode

from ..config import config_value

__all__ = [
    "AGREEMENT_KEYS",
    "Mismatch",
    "TeacherMismatchError",
    "check_teacher",
    "teacher_reads",
    "teacher_student_mismatches",
]

# What the teacher must share with the student, by what a term reads of it.
AGREEMENT_KEYS = {
    # The teacher reads the images the student's data loader decoded in the student's format.
    "features": ("INPUT.FORMAT",),
    "rpn": (
        "MODEL.ANCHOR_GENERATOR.NAME", "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        "MODEL.ANCHOR_GENERATOR.OFFSET", "MODEL.RPN.IN_FEATURES", "MODEL.RPN.BBOX_REG_WEIGHTS",
    ),
    "roi": ("MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.IN_FEATURES"),
    "box_deltas": ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"),
}

# What each group means, for the error message.
READS = {
    "features": "the teacher's maps of the student's images",
    "rpn": "the teacher's RPN outputs on the student's anchors",
    "roi": "the teacher's box head on the student's RoIs",
    "box_deltas": "the teacher's box deltas on the student's RoIs",
}


@dataclass(frozen=True)
class Mismatch:
    """A config key whose value differs between student and teacher."""

    key: str
    student: Any
    teacher: Any
    # What a term reads that makes this key matter ("features", "rpn", "roi", "box_deltas").
    needed_for: str
    # True when some distillation term of the run reads it.
    read: bool

    def describe(self) -> str:
        where = (f"READ by a distillation term ({READS[self.needed_for]})" if self.read
                 else f"not read by any term (no term needs '{self.needed_for}')")
        return f"{self.key}: student {self.student!r} vs teacher {self.teacher!r} [{where}]"


class TeacherMismatchError(ValueError):
    """The teacher's config disagrees with the student's on something a distillation term reads."""

    def __init__(self, mismatches: Sequence[Mismatch]):
        self.mismatches = list(mismatches)
        super().__init__(
            "The teacher (MODEL.TEACHER.CONFIG_FILE) encodes differently what a distillation term reads "
            "on the student's terms; make these keys agree:\n  " + "\n  ".join(m.describe() for m in self.mismatches)
        )


def teacher_reads(terms: Iterable) -> FrozenSet[str]:
    """What ``terms`` (distillation terms) read of the teacher on the student's terms: their
    ``teacher_needs``, and "box_deltas" where one reads the teacher's box deltas."""
    reads = set()
    for term in terms:
        reads |= set(term.teacher_needs)
        if term.reads_teacher_box_deltas:
            reads.add("box_deltas")
    return frozenset(reads)


def _normalise(value: Any) -> Any:
    """Lists and tuples (at any depth) compare equal to each other."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def teacher_student_mismatches(student: CfgNode, teacher: CfgNode, reads: FrozenSet[str],
                               groups: Sequence[str] = tuple(AGREEMENT_KEYS)) -> List[Mismatch]:
    """Keys of ``AGREEMENT_KEYS`` (for ``groups``) whose values differ; ``read`` marks those of a
    group in ``reads`` (:func:`teacher_reads` of the run's terms)."""
    found = []
    for group in groups:
        for key in AGREEMENT_KEYS[group]:
            s, t = _normalise(config_value(student, key)), _normalise(config_value(teacher, key))
            if s != t:
                found.append(Mismatch(key, s, t, group, group in reads))
    return found


def check_teacher(student: CfgNode, teacher: CfgNode, reads: FrozenSet[str]) -> List[Mismatch]:
    """Raise :class:`TeacherMismatchError` when a key that ``reads`` needs differs; return the
    mismatches no term reads (informative)."""
    mismatches = teacher_student_mismatches(student, teacher, reads)
    read = [m for m in mismatches if m.read]
    if read:
        raise TeacherMismatchError(read)
    return mismatches

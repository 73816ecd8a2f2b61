"""Does the teacher agree with the student where a distillation term reads one on the other's terms?

Some teacher outputs are only meaningful in the student's frame: the teacher's RPN deltas are
read on the *student's* anchors ("rpn"), its box deltas on the student's RoIs ("roi"), and every
term compares maps of the same padded images ("features"). :func:`teacher_student_mismatches`
lists the config keys whose values differ between the two configs, each marked with whether a
term of the run reads it (then it is an error waiting to happen) or not (informative).
"""
from dataclasses import dataclass
from typing import Any, FrozenSet, List, Sequence

from detectron2.config import CfgNode

__all__ = ["AGREEMENT_KEYS", "Mismatch", "teacher_student_mismatches"]

# What the teacher must share with the student, by the teacher output a term reads.
AGREEMENT_KEYS = {
    # The teacher reads the images the student's data loader decoded in the student's format.
    "features": ("INPUT.FORMAT",),
    "rpn": (
        "MODEL.ANCHOR_GENERATOR.NAME", "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        "MODEL.ANCHOR_GENERATOR.OFFSET", "MODEL.RPN.IN_FEATURES", "MODEL.RPN.BBOX_REG_WEIGHTS",
    ),
    "roi": ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.IN_FEATURES"),
}


@dataclass(frozen=True)
class Mismatch:
    """A config key whose value differs between student and teacher."""

    key: str
    student: Any
    teacher: Any
    # The teacher output ("features", "rpn", "roi") whose use makes this key matter.
    needed_for: str
    # True when some distillation term of the run reads that output.
    read: bool

    def describe(self) -> str:
        where = "READ by a distillation term" if self.read else f"not read by any term (no term needs '{self.needed_for}')"
        return f"{self.key}: student {self.student!r} vs teacher {self.teacher!r} [{where}]"


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def _normalise(value: Any) -> Any:
    """Lists and tuples (at any depth) compare equal to each other."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def teacher_student_mismatches(student: CfgNode, teacher: CfgNode, teacher_needs: FrozenSet[str],
                               groups: Sequence[str] = tuple(AGREEMENT_KEYS)) -> List[Mismatch]:
    """Keys of ``AGREEMENT_KEYS`` (for ``groups``) whose values differ; ``read`` marks those a term
    needs (``teacher_needs``: the union of the terms' ``teacher_needs``)."""
    found = []
    for group in groups:
        for key in AGREEMENT_KEYS[group]:
            s, t = _get(student, key), _get(teacher, key)
            if _normalise(s) != _normalise(t):
                found.append(Mismatch(key, s, t, group, group in teacher_needs))
    return found

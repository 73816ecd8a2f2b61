"""Recorders: what the student and the teacher expose to the distillation terms.

A term lists in ``teacher_needs`` the recorder names it reads ("features", "rpn", "roi"). For one
training step the distiller asks each recorder it needs for

* the student's output, from its training forward (:class:`StudentForward`), with the help of hooks
  the recorder places on the student while that forward runs (:meth:`Recorder.recording`);
* the teacher's output *on the student's terms*: its FPN maps of the same images, its RPN head on the
  student's anchors, its box head on the student's sampled RoIs (:meth:`Recorder.teacher`).

The outputs reach the terms as two :class:`ModelOutputs` of the
:class:`~hkd_d2.modeling.distill.DistillContext` (``ctx.student``, ``ctx.teacher``). A new output is a
:class:`Recorder` subclass with its own ``name``, registered in ``RECORDER_REGISTRY``; nothing else
changes. The student's "features" and "roi" come with every step (its forward computes them);
the teacher's "features" whenever the teacher runs.

Shapes: N images, R sampled RoIs over the batch, C channels, S pooler resolution, K classes,
A anchors per location, Hl x Wl the size of level l.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterable, Iterator, List

import torch
from torch import nn
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.registry import Registry

if TYPE_CHECKING:
    from .teacher import Teacher

__all__ = [
    "RECORDER_REGISTRY",
    "ALWAYS_RECORDED",
    "ModelOutputs",
    "Recorder",
    "RoIOutputs",
    "RPNOutputs",
    "StudentForward",
    "StudentRPNOutputs",
    "build_recorders",
    "recorder_names",
]

RECORDER_REGISTRY = Registry("DISTILL_RECORDER")
RECORDER_REGISTRY.__doc__ = """
Recorders of model outputs the distillation terms read. Each is a :class:`Recorder` subclass whose
``name`` is what terms list in ``teacher_needs``; built as ``Recorder()``.
"""

# Recorded for the student in every training step (its forward computes them anyway).
ALWAYS_RECORDED = frozenset({"features", "roi"})


@dataclass(frozen=True)
class RoIOutputs:
    """Box-head outputs on the step's sampled RoIs (the student's, shared by the teacher)."""

    # Pooled RoI features (R, C, S, S).
    features: torch.Tensor
    # Class logits (R, K+1), background last.
    scores: torch.Tensor
    # Box deltas (R, 4K), or (R, 4) with class-agnostic regression.
    deltas: torch.Tensor


@dataclass(frozen=True)
class RPNOutputs:
    """RPN head outputs per level of ``MODEL.RPN.IN_FEATURES``, on the student's anchors."""

    # Per level (N, A, Hl, Wl).
    objectness_logits: List[torch.Tensor]
    # Per level (N, A*4, Hl, Wl).
    anchor_deltas: List[torch.Tensor]
    # The student's anchors, per level Boxes (Hl*Wl*A, 4) (the teacher's outputs are read on them).
    anchors: List[Boxes]


@dataclass(frozen=True)
class StudentRPNOutputs(RPNOutputs):
    """The student's RPN outputs plus the training targets its own RPN losses used."""

    # N label vectors (sum HlWlA,) in {-1, 0, 1}: its sampled mini-batch (-1: not sampled or ignored).
    gt_labels: List[torch.Tensor]
    # N (sum HlWlA, 4) matched ground-truth boxes (meaningful where the label is 1).
    gt_boxes: List[torch.Tensor]


class ModelOutputs:
    """What one model exposed in one training step, by recorder name.

    ``features`` (level -> (N, C, Hl, Wl)), ``roi`` (:class:`RoIOutputs`) and ``rpn``
    (:class:`RPNOutputs`) are the built-in recorders' outputs; ``outputs[name]`` reads any. Reading
    an output that was not recorded raises a KeyError saying which ``teacher_needs`` entry is missing.
    """

    def __init__(self, who: str, **outputs: Any):
        """
        Args:
            who: "student" or "teacher" (named in errors).
            outputs: recorder name -> output.
        """
        self.who = who
        self._outputs: Dict[str, Any] = dict(outputs)

    def __getitem__(self, name: str) -> Any:
        if name not in self._outputs:
            raise KeyError(
                f"The {self.who}'s '{name}' outputs were not recorded in this step (recorded: "
                f"{sorted(self._outputs)}): a term reading them lists '{name}' in its teacher_needs"
            )
        return self._outputs[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._outputs[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self._outputs

    @property
    def features(self) -> Dict[str, torch.Tensor]:
        return self["features"]

    @property
    def roi(self) -> RoIOutputs:
        return self["roi"]

    @property
    def rpn(self) -> RPNOutputs:
        return self["rpn"]


@dataclass(frozen=True)
class StudentForward:
    """What the student's training forward computed, as the recorders read it."""

    images: ImageList
    gt_instances: List[Instances]
    # Backbone outputs, e.g. {"p2": (N, C, H/4, W/4), ...}.
    features: Dict[str, torch.Tensor]
    # The sampled RoIs (proposal_boxes, gt_classes, gt_boxes, ...), R in all.
    proposals: List[Instances]
    roi: RoIOutputs


class Recorder:
    """How one output is read from the student (during its forward) and from the teacher (on the
    student's terms). Subclasses set ``name`` and implement :meth:`student` and :meth:`teacher`."""

    # What a term lists in ``teacher_needs`` to read this output.
    name: ClassVar[str]

    def check(self, student: nn.Module) -> None:
        """Raise a ValueError when ``student`` (the distiller) cannot expose this output."""

    @contextmanager
    def recording(self, student: nn.Module) -> Iterator[Any]:
        """Hooks on ``student`` while its training forward runs; yields what they collect."""
        yield None

    def student(self, forward: StudentForward, recorded: Any) -> Any:
        """The student's output, from its forward and what :meth:`recording` collected."""
        raise NotImplementedError

    def teacher(
        self, teacher: "Teacher", features: Dict[str, torch.Tensor], forward: StudentForward, student: Any
    ) -> Any:
        """The teacher's output (no gradients) on the student's terms, given the teacher's backbone
        ``features`` of the step's images, the student's forward and the student's output."""
        raise NotImplementedError


@contextmanager
def forward_outputs(module: nn.Module) -> Iterator[list]:
    """Collect the outputs of every ``module`` call made inside the block (a forward hook)."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


@RECORDER_REGISTRY.register()
class FeaturesRecorder(Recorder):
    """Backbone (FPN) maps, by level name: the teacher's are of the same padded images."""

    name = "features"

    def student(self, forward: StudentForward, recorded: Any) -> Dict[str, torch.Tensor]:
        return forward.features

    def teacher(self, teacher, features, forward, student) -> Dict[str, torch.Tensor]:
        return features


@RECORDER_REGISTRY.register()
class RoIRecorder(Recorder):
    """Box-head outputs on the student's sampled RoIs: the teacher pools its own maps on them."""

    name = "roi"

    def student(self, forward: StudentForward, recorded: Any) -> RoIOutputs:
        return forward.roi

    def teacher(self, teacher, features, forward, student) -> RoIOutputs:
        pooled, (scores, deltas) = teacher.pool_and_predict(features, forward.proposals)
        return RoIOutputs(pooled, scores, deltas)


@RECORDER_REGISTRY.register()
class RPNRecorder(Recorder):
    """RPN head outputs: the student's (with its anchors and training targets) as its RPN computed
    them, the teacher's RPN head on the teacher's maps, read on the student's anchors."""

    name = "rpn"

    def check(self, student: nn.Module) -> None:
        if not callable(getattr(student.proposal_generator, "recording_targets", None)):
            raise ValueError(
                "A distillation term reads the student's RPN training targets, which "
                f"{type(student.proposal_generator).__name__} does not record: set "
                "MODEL.PROPOSAL_GENERATOR.NAME 'PedestrianRPN'"
            )

    @contextmanager
    def recording(self, student: nn.Module) -> Iterator[Dict[str, list]]:
        rpn = student.proposal_generator
        with forward_outputs(rpn.rpn_head) as head, forward_outputs(rpn.anchor_generator) as anchors, \
                rpn.recording_targets() as targets:
            yield {"head": head, "anchors": anchors, "targets": targets}

    def student(self, forward: StudentForward, recorded: Dict[str, list]) -> StudentRPNOutputs:
        objectness, deltas = recorded["head"][-1]
        gt_labels, gt_boxes = recorded["targets"][-1]
        return StudentRPNOutputs(objectness, deltas, recorded["anchors"][-1], gt_labels, gt_boxes)

    def teacher(self, teacher, features, forward, student: StudentRPNOutputs) -> RPNOutputs:
        objectness, deltas = teacher.rpn_head(features)
        for s, t in zip(student.objectness_logits, objectness):
            if s.shape != t.shape:
                raise ValueError(
                    f"Teacher RPN objectness {tuple(t.shape)} does not match the student's "
                    f"{tuple(s.shape)}: teacher and student need the same RPN.IN_FEATURES and anchors"
                )
        return RPNOutputs(objectness, deltas, student.anchors)


def recorder_names() -> List[str]:
    """The names of the registered recorders (what ``teacher_needs`` may list)."""
    return sorted(cls.name for _, cls in RECORDER_REGISTRY)


def build_recorders(names: Iterable[str], student: nn.Module) -> List[Recorder]:
    """The recorders of ``names`` (sorted), each checked against ``student``; a ValueError names
    an unknown one."""
    classes = {cls.name: cls for _, cls in RECORDER_REGISTRY}
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"Unknown recorder(s) {unknown} in a term's teacher_needs; registered: {sorted(classes)}")
    recorders = [classes[name]() for name in sorted(set(names))]
    for recorder in recorders:
        recorder.check(student)
    return recorders

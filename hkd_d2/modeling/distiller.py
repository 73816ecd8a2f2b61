"""Distiller: the meta-architecture that trains a student detector under a teacher, frozen or
trained in the same run (``MODEL.TEACHER.ONLINE``).

One training step (N images, R sampled RoIs over the batch):

1. student, with the hooks of the needed recorders (:mod:`hkd_d2.modeling.recorders`) in place:
   preprocess -> backbone -> RPN (proposals + RPN losses) -> ROI heads sample the proposals once
   (``label_and_sample_proposals``) -> ``pool_and_predict`` on the sampled RoIs -> box-head losses
   (``box_predictor.losses``): the *detection* losses;
2. teacher (only when some distillation term needs it): its own preprocessing of the same inputs
   (same padded size is checked) and its backbone once, then each needed recorder's teacher output
   on the student's terms under ``torch.no_grad()`` (RPN head on the student's anchors: "rpn";
   ``pool_and_predict`` on *the same* sampled RoIs: "roi"). A frozen teacher runs in eval mode
   under ``no_grad``; an online one runs its own training forward (its own proposals and sampled
   RoIs, its detection losses ``teacher/loss_*``), whose backbone maps the terms read detached;
3. every distillation term reads the :class:`~hkd_d2.modeling.distill.DistillContext` and returns
   its raw losses; the distiller trains on ``term.weight x factor x raw``, the factor being the
   term's schedule at ``self.distill_iter`` (the iteration, set by
   :class:`hkd_d2.engine.DistillationHook`; None outside a trainer: factor 1), and applies the
   terms' factors on detection losses (Chen et al.'s ``mu``);
4. the step's losses by origin, :class:`StepLosses` (detection, distillation, raw, the factors
   applied, the terms' statistics), are kept as ``last_losses``: the runaway guard, the loss
   calibration and the metrics hook read them there. ``forward`` returns detection,
   distillation and (online) teacher losses in one dict, as Detectron2's trainers expect.

Loss normalisation of the HKD terms (see :mod:`hkd_d2.modeling.distill.hkd`): every MSE is a
plain mean over all elements of its tensors, so it does not grow with batch size, channels or
RoI count: ``L_PD = sum_{l in P2..P5} mean((P_s,l - P_t,l)^2)``, ``L_RD = mean((R_s - R_t)^2)``
over the (R, C, S, S) pooled RoI features, ``L_LD = mean((G_s - G_t)^2)`` over the (R, K+1)
class logits. The trained ``loss_pd/rd/ld`` are ``lambda * factor * L``.

A frozen teacher is held outside the module tree: it is not in ``state_dict()``,
``parameters()``, the optimizer or the DDP wrapper; ``.to()``/``.cuda()`` still move it with the
student. An online teacher is the submodule ``teacher``: its parameters are in ``parameters()``
(the optimizer, the DDP wrapper) and in ``state_dict()`` under ``teacher.`` (one checkpoint, so a
resume resumes both). Parameters that exist only for distillation (channel adapters under
``distill_terms.``, an online teacher) are dropped by :func:`hkd_d2.export.export_student`
(:func:`distill_only_prefixes`). In eval mode only the student runs.
"""
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from torch import nn
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from .compatibility import check_teacher, teacher_reads
from .distill import DistillContext, build_distill_terms, enabled_term_classes, unwrap_ddp
from .recorders import ALWAYS_RECORDED, ModelOutputs, RoIOutputs, StudentForward, build_recorders
from .teacher import Teacher, TeacherStep, build_teacher

__all__ = ["Distiller", "HKDDistiller", "StepLosses", "DISTILL_ONLY_PREFIXES", "TEACHER_PREFIX",
           "distill_only_prefixes", "distills", "extra_checkpointables", "training_architecture"]

logger = logging.getLogger(__name__)

# state_dict prefixes of parameters that exist only while distilling (dropped at export).
DISTILL_ONLY_PREFIXES = ("distill_terms.",)
# state_dict prefix of a teacher trained in the run (MODEL.TEACHER.ONLINE).
TEACHER_PREFIX = "teacher."


@dataclass(frozen=True)
class StepLosses:
    """The losses of one training step of a :class:`Distiller`, by origin (0-dim tensors)."""

    # The student detector's own losses (RPN, box head), after the terms' factors on them.
    detection: Dict[str, torch.Tensor]
    # Every term's losses as trained on: WEIGHT x schedule factor x raw value, in term order, then
    # those of the architecture's own (online) distillation, e.g. PCL's peer teachers.
    distillation: Dict[str, torch.Tensor]
    # The terms' raw losses (before WEIGHT and the schedule): term class name -> loss name -> value.
    raw: Dict[str, Dict[str, torch.Tensor]]
    # The schedule factor each distillation loss got (0 before a term's start, ramping in the warm-up).
    scales: Dict[str, float]
    # The terms' statistics (e.g. "distill/pd"): floats or 0-dim tensors.
    stats: Dict[str, Union[float, torch.Tensor]]
    # An online teacher's own detection losses ("teacher/loss_cls", ...); empty for a frozen teacher.
    teacher: Dict[str, torch.Tensor] = field(default_factory=dict)

    def detached(self) -> "StepLosses":
        """The same values, out of the autograd graph."""
        def detach(values: Dict[str, Any]) -> Dict[str, Any]:
            return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}

        return StepLosses(detach(self.detection), detach(self.distillation),
                          {term: detach(raw) for term, raw in self.raw.items()}, dict(self.scales), detach(self.stats),
                          detach(self.teacher))


def training_architecture(cfg: CfgNode) -> type:
    """The :class:`Distiller` class of ``cfg``'s meta-architecture; ``Distiller`` itself for a plain
    detector's config (whose defaults add nothing: no hook, the checkpoint's weights as they are)."""
    meta = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return meta if isinstance(meta, type) and issubclass(meta, Distiller) else Distiller


def extra_checkpointables(model: nn.Module) -> Dict[str, Any]:
    """What checkpoints of ``model`` (DDP-wrapped or not) hold beside its ``state_dict``: a
    distiller's :meth:`Distiller.extra_checkpointables`, nothing for another detector."""
    model = unwrap_ddp(model)
    return model.extra_checkpointables() if isinstance(model, Distiller) else {}


def distills(cfg: CfgNode) -> bool:
    """Whether ``cfg`` trains under a teacher: its meta-architecture is a :class:`Distiller`
    and some term of ``MODEL.DISTILL.TERMS`` has a weight other than 0."""
    meta = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return isinstance(meta, type) and issubclass(meta, Distiller) and bool(enabled_term_classes(cfg))


def distill_only_prefixes(cfg: CfgNode) -> Tuple[str, ...]:
    """The state_dict prefixes of a checkpoint of ``cfg`` that are not the student's: channel
    adapters, and the teacher when it trains in the run (``MODEL.TEACHER.ONLINE``)."""
    return DISTILL_ONLY_PREFIXES + ((TEACHER_PREFIX,) if cfg.MODEL.TEACHER.ONLINE else ())


@META_ARCH_REGISTRY.register()
class Distiller(GeneralizedRCNN):
    """A ``GeneralizedRCNN`` student plus distillation terms and a teacher (frozen or online)."""

    # Student weights (MODEL.WEIGHTS) need not hold these; read by DistillCheckpointer.
    checkpoint_optional_prefixes = DISTILL_ONLY_PREFIXES
    # ... but a checkpoint resumed from must hold these (an online teacher restarted from its
    # initial weights would go unnoticed); read by DistillCheckpointer.
    checkpoint_resume_prefixes = (TEACHER_PREFIX,)
    # Hooks the architecture itself needs in training (beside its terms'), each built as hook(cfg)
    # and run before the checkpointer and the evaluation (e.g. PCL's mean-teacher update).
    training_hooks: Tuple[Callable[[CfgNode], Any], ...] = ()

    @configurable
    def __init__(
        self,
        *,
        teacher: Optional[Teacher],
        distill_terms: nn.ModuleList,
        **kwargs,
    ):
        """
        Args:
            teacher: the teacher (:class:`FrozenTeacher` or :class:`OnlineTeacher`), or None when
                no term needs it.
            distill_terms: :class:`DistillTerm` modules (weight != 0).
            kwargs: the student's arguments, as for :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        for method in ("label_and_sample_proposals", "pool_and_predict"):
            if not callable(getattr(self.roi_heads, method, None)):
                raise TypeError(
                    f"The Distiller needs ROI heads with {method}() (PedestrianROIHeads); "
                    f"got {type(self.roi_heads).__name__}"
                )
        if getattr(self.roi_heads, "mask_on", False) or getattr(self.roi_heads, "keypoint_on", False):
            raise ValueError("The Distiller trains box detectors only: set MASK_ON/KEYPOINT_ON False")
        self.distill_terms = distill_terms
        self.teacher_needs: FrozenSet[str] = frozenset().union(*(t.teacher_needs for t in distill_terms))
        if self.teacher_needs and teacher is None:
            raise ValueError(f"Distillation terms need the teacher's {set(self.teacher_needs)}")
        teacher = teacher if self.teacher_needs else None
        if teacher is not None and teacher.trained:
            # A submodule: in state_dict (under "teacher."), parameters (the optimizer) and DDP.
            self.teacher = teacher
            self.checkpoint_optional_prefixes = DISTILL_ONLY_PREFIXES + (TEACHER_PREFIX,)
        else:
            # Plain attribute, not a submodule: keeps a frozen teacher out of state_dict/parameters/DDP.
            object.__setattr__(self, "teacher", teacher)
        self.recorders = build_recorders(self.teacher_needs | ALWAYS_RECORDED, self)
        # Training iteration for the terms' schedules; the DistillationHook sets it every
        # iteration (None: no schedule, every factor 1).
        self.distill_iter: Optional[int] = None
        # The losses of the last training step, detached (None before the first).
        self.last_losses: Optional[StepLosses] = None

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        student_shapes = ret["backbone"].output_shape()
        teacher = build_teacher(cfg) if distills(cfg) else None
        teacher_shapes = teacher.detector.backbone.output_shape() if teacher is not None else {}
        terms = build_distill_terms(cfg, student_shapes, teacher_shapes)
        if teacher is None:
            logger.info("No distillation term with a weight other than 0: the teacher is not built")
        else:
            for mismatch in check_teacher(cfg, teacher.cfg, teacher_reads(terms)):
                logger.info(f"Teacher and student differ on {mismatch.describe()}")
        ret.update(teacher=teacher, distill_terms=terms)
        return ret

    @classmethod
    def deployed_config(cls, cfg: CfgNode) -> CfgNode:
        """Edit ``cfg``, already a ``GeneralizedRCNN`` student config without teacher and
        distillation keys (:func:`hkd_d2.export.student_config`), into the config of the detector this
        architecture deploys, and return it: nothing more to change for a plain distiller."""
        return cfg

    @classmethod
    def deployed_weights(cls, cfg: CfgNode, checkpoint: Dict[str, Any], source: str) -> Dict[str, torch.Tensor]:
        """The deployed detector's state dict from a training ``checkpoint`` of ``cfg`` (``"model"``
        and the other entries the trainer saved; ``source`` names it in errors): the student's
        weights; the caller drops the distillation-only keys."""
        return checkpoint["model"]

    def extra_checkpointables(self) -> Dict[str, Any]:
        """Objects with a ``state_dict`` that checkpoints hold beside the model's (by entry name)."""
        return {}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.teacher is not None and not self.teacher.trained:  # an online teacher is a submodule
            self.teacher._apply(fn)
        return self

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: dict of the student's detection losses followed by the ``loss_*`` distillation
        losses and an online teacher's ``teacher/loss_*`` (all also in ``last_losses``). Eval: the
        student's detections (see :meth:`GeneralizedRCNN.inference`)."""
        if not self.training:
            return self.inference(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("Distiller training needs 'instances' in every input dict")
        losses = self._step_losses(batched_inputs)
        self.last_losses = losses.detached()
        return {**losses.detection, **losses.distillation, **losses.teacher}

    def _step_losses(self, batched_inputs: List[Dict]) -> StepLosses:
        """The losses of one training step (see the module docstring)."""
        step, recorded, detection = self._student_forward(batched_inputs)
        return self._term_losses(batched_inputs, step, recorded, detection)

    def _term_losses(self, batched_inputs: List[Dict], step: StudentForward, recorded: Dict[str, Any],
                     detection: Dict[str, torch.Tensor]) -> StepLosses:
        """The student's ``detection`` losses and its terms' on its forward ``step`` (the teacher run
        as they need)."""
        if not self.distill_terms:
            return StepLosses(detection, {}, {}, {}, {})
        student = ModelOutputs("student", **{r.name: r.student(step, recorded[r.name]) for r in self.recorders})
        teacher_step = self._teacher_step(batched_inputs, step)
        ctx = DistillContext(
            images=step.images,
            gt_instances=step.gt_instances,
            proposals=step.proposals,
            student=student,
            teacher=self._teacher_outputs(teacher_step, step, student),
        )
        self._scale_detector_losses(detection)
        losses = self._distill(ctx, detection)
        return replace(losses, teacher=teacher_step.losses) if teacher_step is not None else losses

    def _student_forward(
        self, batched_inputs: List[Dict]
    ) -> Tuple[StudentForward, Dict[str, Any], Dict[str, torch.Tensor]]:
        """The student's training forward with the recorders' hooks in place: what it computed,
        what the hooks recorded (by recorder name) and its detection losses."""
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        with ExitStack() as stack:
            recorded = {r.name: stack.enter_context(r.recording(self)) for r in self.recorders}
            features = self.backbone(images.tensor)
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
            step, box_losses = self._box_forward(images, gt_instances, features, proposals)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, step.proposals)
        return step, recorded, {**proposal_losses, **box_losses}

    def _box_forward(self, images: ImageList, gt_instances: List, features: Dict[str, torch.Tensor],
                     proposals: List) -> Tuple[StudentForward, Dict[str, torch.Tensor]]:
        """The ROI heads' part of the student's forward on the RPN's ``proposals``: the step as the
        recorders read it (the sampled RoIs, their pooled features and predictions) and the box losses."""
        proposals = self.roi_heads.label_and_sample_proposals(proposals, gt_instances)
        roi_features, predictions = self.roi_heads.pool_and_predict(features, proposals)
        losses = self.roi_heads.box_predictor.losses(predictions, proposals)
        return StudentForward(images, gt_instances, features, proposals, RoIOutputs(roi_features, *predictions)), losses

    def _teacher_step(self, batched_inputs: List[Dict], step: StudentForward) -> Optional[TeacherStep]:
        """The teacher's work on the step's inputs (None without a teacher), its images checked."""
        if self.teacher is None:
            return None
        teacher_step = self.teacher.step(batched_inputs)
        self._check_same_images(step.images, teacher_step.images)
        return teacher_step

    def _teacher_outputs(self, teacher_step: Optional[TeacherStep], step: StudentForward,
                         student: ModelOutputs) -> ModelOutputs:
        """The teacher outputs some term needs, on the student's terms, from its backbone maps."""
        outputs = ModelOutputs("teacher")
        if teacher_step is None:
            return outputs
        for recorder in self.recorders:
            if recorder.name in self.teacher_needs or recorder.name == "features":
                outputs[recorder.name] = recorder.teacher(self.teacher, teacher_step.features, step,
                                                          student[recorder.name])
        return outputs

    @staticmethod
    def _check_same_images(student: ImageList, teacher: torch.Tensor) -> None:
        if student.tensor.shape[-2:] != teacher.shape[-2:]:
            raise ValueError(
                f"Teacher and student pad images differently ({tuple(teacher.shape[-2:])} vs "
                f"{tuple(student.tensor.shape[-2:])}): give them the same backbone size divisibility"
            )

    def _scale_detector_losses(self, losses: Dict[str, torch.Tensor]) -> None:
        """Apply the terms' factors on detection losses, following each term's schedule: a factor
        f becomes ``1 - scale * (1 - f)`` (the plain detector at scale 0, the term's at 1)."""
        for term in self.distill_terms:
            scale = term.schedule.scale(self.distill_iter)
            for name, factor in term.detector_loss_scales.items():
                losses[name] = losses[name] * (1.0 - scale * (1.0 - factor))

    def _distill(self, ctx: DistillContext, detection: Dict[str, torch.Tensor]) -> StepLosses:
        """Call every term; weigh and schedule its raw losses."""
        distillation: Dict[str, torch.Tensor] = {}
        raw: Dict[str, Dict[str, torch.Tensor]] = {}
        scales: Dict[str, float] = {}
        for term in self.distill_terms:
            raw[type(term).__name__] = term_losses = term(ctx)
            for name, value in term_losses.items():
                if name in distillation or name in detection:
                    raise KeyError(f"Distillation term {type(term).__name__} reports the loss '{name}' another term "
                                   "or the detector reports too")
                scales[name] = term.schedule.loss_scale(name, self.distill_iter)
                distillation[name] = term.weight * value * scales[name]
        return StepLosses(detection, distillation, raw, scales, ctx.stats)


@META_ARCH_REGISTRY.register()
class HKDDistiller(Distiller):
    """Deprecated name of :class:`Distiller`, kept for one release so that configs with
    ``MODEL.META_ARCHITECTURE: "HKDDistiller"`` still build."""

    def __init__(self, *args, **kwargs):
        logger.warning('MODEL.META_ARCHITECTURE "HKDDistiller" is deprecated and will be removed: use "Distiller"')
        super().__init__(*args, **kwargs)

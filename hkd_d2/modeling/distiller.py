"""HKDDistiller: the meta-architecture that trains a student detector under a frozen teacher.

One training step (N images, R sampled RoIs over the batch):

1. student: preprocess -> backbone -> RPN (proposals + RPN losses) -> ROI heads sample the
   proposals once (``label_and_sample_proposals``) -> ``pool_and_predict`` on the sampled RoIs
   -> box-head losses (``box_predictor.losses``);
2. teacher (only when some distillation term needs it, under ``torch.no_grad()``, eval mode):
   its own preprocessing of the same inputs (same padded size is checked), its backbone once,
   then, on demand, its RPN head on the student's anchors ("rpn") and its ``pool_and_predict``
   on *the same* sampled RoIs ("roi");
3. every distillation term reads a :class:`DistillContext` and returns weighted losses; each
   is multiplied by the term's schedule factor at ``self.distill_iter`` (the iteration, set by
   :class:`hkd_d2.engine.DistillationHook`; None outside a trainer: factor 1).

Loss normalisation of the HKD terms (see :mod:`hkd_d2.modeling.distill.hkd`): every MSE is a
plain mean over all elements of its tensors, so it does not grow with batch size, channels or
RoI count: ``L_PD = sum_{l in P2..P5} mean((P_s,l - P_t,l)^2)``, ``L_RD = mean((R_s - R_t)^2)``
over the (R, C, S, S) pooled RoI features, ``L_LD = mean((G_s - G_t)^2)`` over the (R, K+1)
class logits. The reported ``loss_pd/rd/ld`` are ``lambda * scale * L``.

The teacher is held outside the module tree: it is not in ``state_dict()``, ``parameters()``,
the optimizer or the DDP wrapper; ``.to()``/``.cuda()`` still move it with the student.
Parameters that exist only for distillation (channel adapters) live under ``distill_terms.``
and are dropped by :func:`hkd_d2.export.export_student`. In eval mode only the student runs.
"""
import logging
from contextlib import contextmanager
from typing import Any, Dict, FrozenSet, Iterator, List, Optional

import torch
from torch import nn
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from .distill import DistillContext, build_distill_terms, enabled_term_classes
from .teacher import FrozenTeacher, build_teacher

__all__ = ["HKDDistiller", "DISTILL_ONLY_PREFIXES", "distills", "check_teacher_conventions"]

logger = logging.getLogger(__name__)

# state_dict prefixes of parameters that exist only while distilling (dropped at export).
DISTILL_ONLY_PREFIXES = ("distill_terms.",)


@contextmanager
def _record_outputs(module: nn.Module, enabled: bool) -> Iterator[list]:
    """Collect the outputs of every ``module`` call made inside the block (when enabled)."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out)) if enabled else None
    try:
        yield outputs
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def _record_returns(obj: Any, method: str, enabled: bool) -> Iterator[list]:
    """Collect the return values of every ``obj.<method>(...)`` call made inside the block (when
    enabled), by shadowing the method with a recording wrapper on the instance."""
    returns: list = []
    if not enabled:
        yield returns
        return
    shadowed = method in vars(obj)
    original = getattr(obj, method)

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        returns.append(out)
        return out

    setattr(obj, method, recording)
    try:
        yield returns
    finally:
        if shadowed:
            setattr(obj, method, original)
        else:
            delattr(obj, method)


def distills(cfg: CfgNode) -> bool:
    """Whether ``cfg`` trains under a teacher: its meta-architecture is an :class:`HKDDistiller`
    and some term of ``MODEL.DISTILL.TERMS`` has a weight other than 0."""
    meta = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return isinstance(meta, type) and issubclass(meta, HKDDistiller) and bool(enabled_term_classes(cfg))


def _anchor_layout(proposal_generator: nn.Module) -> tuple:
    generator = proposal_generator.anchor_generator
    return (
        type(generator).__name__,
        [a.tolist() for a in generator.cell_anchors],
        list(generator.strides),
        generator.offset,
        tuple(proposal_generator.box2box_transform.weights),
    )


def _box_delta_layout(roi_heads: nn.Module) -> tuple:
    predictor = roi_heads.box_predictor
    return tuple(predictor.box2box_transform.weights), predictor.bbox_pred.out_features


def check_teacher_conventions(
    student_rpn: nn.Module, student_roi_heads: nn.Module, teacher: FrozenTeacher, terms: nn.ModuleList
) -> None:
    """Raise a ValueError when a term reads teacher outputs that the student's conventions do
    not fit: RPN outputs on the student's anchors need the same anchors (MODEL.ANCHOR_GENERATOR)
    and MODEL.RPN.BBOX_REG_WEIGHTS; box deltas on the student's RoIs need the same
    MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS and class-specific/agnostic regression."""
    detector = teacher.detector
    checks = []
    if any("rpn" in t.teacher_needs for t in terms):
        checks.append(("anchors (MODEL.ANCHOR_GENERATOR, MODEL.RPN.BBOX_REG_WEIGHTS)",
                       _anchor_layout(student_rpn), _anchor_layout(detector.proposal_generator)))
    if any(t.reads_teacher_box_deltas for t in terms):
        checks.append(("box deltas (MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS, CLS_AGNOSTIC_BBOX_REG)",
                       _box_delta_layout(student_roi_heads), _box_delta_layout(detector.roi_heads)))
    for what, student, teacher_layout in checks:
        if student != teacher_layout:
            raise ValueError(
                f"A distillation term reads the teacher's {what.split(' (')[0]} on the student's terms, "
                f"but they are encoded differently: {what} of the student {student} vs the teacher "
                f"{teacher_layout} (MODEL.TEACHER.CONFIG_FILE)"
            )


@META_ARCH_REGISTRY.register()
class HKDDistiller(GeneralizedRCNN):
    """A ``GeneralizedRCNN`` student plus distillation terms and a frozen teacher."""

    # Student weights (MODEL.WEIGHTS) need not hold these; read by HKDCheckpointer.
    checkpoint_optional_prefixes = DISTILL_ONLY_PREFIXES

    @configurable
    def __init__(
        self,
        *,
        teacher: Optional[FrozenTeacher],
        distill_terms: nn.ModuleList,
        **kwargs,
    ):
        """
        Args:
            teacher: the frozen teacher, or None when no term needs it.
            distill_terms: :class:`DistillTerm` modules (weight != 0).
            kwargs: the student's arguments, as for :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        for method in ("label_and_sample_proposals", "pool_and_predict"):
            if not callable(getattr(self.roi_heads, method, None)):
                raise TypeError(
                    f"HKDDistiller needs ROI heads with {method}() (PedestrianROIHeads); "
                    f"got {type(self.roi_heads).__name__}"
                )
        if getattr(self.roi_heads, "mask_on", False) or getattr(self.roi_heads, "keypoint_on", False):
            raise ValueError("HKDDistiller trains box detectors only: set MASK_ON/KEYPOINT_ON False")
        self.distill_terms = distill_terms
        self.teacher_needs: FrozenSet[str] = frozenset().union(*(t.teacher_needs for t in distill_terms))
        if self.teacher_needs and teacher is None:
            raise ValueError(f"Distillation terms need the teacher's {set(self.teacher_needs)}")
        # Plain attribute, not a submodule: keeps the teacher out of state_dict/parameters/DDP.
        object.__setattr__(self, "_teacher", teacher if self.teacher_needs else None)
        # Training iteration for the terms' schedules; the DistillationHook sets it every
        # iteration (None: no schedule, every factor 1).
        self.distill_iter: Optional[int] = None
        # Unweighted per-term statistics of the last training step (floats or 0-dim tensors).
        self.distill_stats: Dict[str, torch.Tensor] = {}

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
            check_teacher_conventions(ret["proposal_generator"], ret["roi_heads"], teacher, terms)
        ret.update(teacher=teacher, distill_terms=terms)
        return ret

    @property
    def teacher(self) -> Optional[FrozenTeacher]:
        """The frozen teacher (None when no distillation term needs it)."""
        return self._teacher

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn)
        return self

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: dict of student detection losses plus ``loss_*`` distillation losses.
        Eval: the student's detections (see :meth:`GeneralizedRCNN.inference`)."""
        if not self.training:
            return self.inference(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("HKDDistiller training needs 'instances' in every input dict")

        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        rpn = self.proposal_generator
        needs_rpn = "rpn" in self.teacher_needs
        with _record_outputs(rpn.rpn_head, needs_rpn) as rpn_outputs, _record_returns(
            rpn, "label_and_sample_anchors", needs_rpn
        ) as rpn_targets:
            proposals, proposal_losses = rpn(images, features, gt_instances)
        proposals = self.roi_heads.label_and_sample_proposals(proposals, gt_instances)
        roi_features, predictions = self.roi_heads.pool_and_predict(features, proposals)

        losses = dict(proposal_losses)
        losses.update(self.roi_heads.box_predictor.losses(predictions, proposals))
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)
        if not self.distill_terms:
            return losses

        ctx = DistillContext(
            images=images,
            gt_instances=gt_instances,
            student_features=features,
            proposals=proposals,
            student_roi_features=roi_features,
            student_predictions=predictions,
        )
        if needs_rpn:
            ctx.student_rpn = self._student_rpn(features, rpn_outputs, rpn_targets)
        self._fill_teacher(ctx, batched_inputs)
        self._scale_detector_losses(losses)
        losses.update(self._distill_losses(ctx))
        return losses

    def _scale_detector_losses(self, losses: Dict[str, torch.Tensor]) -> None:
        """Apply the terms' factors on detection losses, following each term's schedule: a factor
        f becomes ``1 - scale * (1 - f)`` (the plain detector at scale 0, the term's at 1)."""
        for term in self.distill_terms:
            scale = term.schedule.scale(self.distill_iter)
            for name, factor in term.detector_loss_scales.items():
                losses[name] = losses[name] * (1.0 - scale * (1.0 - factor))

    def _student_rpn(
        self, features: Dict[str, torch.Tensor], rpn_outputs: list, rpn_targets: list
    ) -> Dict[str, list]:
        """The student's RPN head outputs and training targets recorded during its RPN forward,
        and its anchors."""
        objectness, deltas = rpn_outputs[-1]
        gt_labels, gt_boxes = rpn_targets[-1]
        rpn = self.proposal_generator
        anchors = rpn.anchor_generator([features[f] for f in rpn.in_features])
        return {
            "objectness_logits": objectness,
            "anchor_deltas": deltas,
            "anchors": anchors,
            "gt_labels": gt_labels,
            "gt_boxes": gt_boxes,
        }

    def _fill_teacher(self, ctx: DistillContext, batched_inputs: List[Dict]) -> None:
        """Run the teacher work some term needs on the step's inputs and sampled RoIs."""
        teacher_images, teacher_features = self.teacher.features(batched_inputs)
        self._check_same_images(ctx.images, teacher_images)
        ctx.teacher_features = teacher_features
        if "roi" in self.teacher_needs:
            ctx.teacher_roi_features, ctx.teacher_predictions = self.teacher.pool_and_predict(
                teacher_features, ctx.proposals
            )
        if "rpn" in self.teacher_needs:
            objectness, deltas = self.teacher.rpn_head(teacher_features)
            for s, t in zip(ctx.student_rpn["objectness_logits"], objectness):
                if s.shape != t.shape:
                    raise ValueError(
                        f"Teacher RPN objectness {tuple(t.shape)} does not match the student's "
                        f"{tuple(s.shape)}: teacher and student need the same RPN.IN_FEATURES and anchors"
                    )
            ctx.teacher_rpn = {
                "objectness_logits": objectness,
                "anchor_deltas": deltas,
                "anchors": ctx.student_rpn["anchors"],
            }

    @staticmethod
    def _check_same_images(student: ImageList, teacher: ImageList) -> None:
        if student.tensor.shape[-2:] != teacher.tensor.shape[-2:]:
            raise ValueError(
                f"Teacher and student pad images differently ({tuple(teacher.tensor.shape[-2:])} vs "
                f"{tuple(student.tensor.shape[-2:])}): give them the same backbone size divisibility"
            )

    def _distill_losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        """Call every term, scale its losses by its schedule and keep its statistics (with the
        factors of the losses whose schedule is not the plain warm-up, as ``distill/scale_<loss>``)."""
        losses: Dict[str, torch.Tensor] = {}
        for term in self.distill_terms:
            for name, value in term(ctx).items():
                if name in losses:
                    raise KeyError(f"Two distillation terms report the same loss '{name}'")
                scale = term.schedule.loss_scale(name, self.distill_iter)
                losses[name] = value * scale
                if not term.schedule.is_plain_warmup:
                    ctx.stats[f"distill/scale_{name}"] = scale
        self.distill_stats = {
            k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in ctx.stats.items()
        }
        return losses


"""HKDDistiller: the meta-architecture that trains a student detector under a frozen teacher.

One training step (N images, R sampled RoIs over the batch):

1. student: preprocess -> backbone -> RPN (proposals + RPN losses) -> ROI heads sample the
   proposals once (``label_and_sample_proposals``) -> ``pool_and_predict`` on the sampled RoIs
   -> box-head losses (``box_predictor.losses``);
2. teacher (only when some distillation term needs it, under ``torch.no_grad()``, eval mode):
   its own preprocessing of the same inputs (same padded size is checked), its backbone once,
   then, on demand, its RPN head on the student's anchors ("rpn") and its ``pool_and_predict``
   on *the same* sampled RoIs ("roi");
3. every distillation term reads a :class:`DistillContext` and returns weighted losses; the
   sum is multiplied by ``self.distill_scale`` (the warm-up schedule, set by
   :class:`hkd_d2.engine.DistillationHook`).

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
from typing import Dict, FrozenSet, Iterator, List, Optional

import torch
from torch import nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from .distill import DistillContext, build_distill_terms
from .teacher import FrozenTeacher, build_teacher

__all__ = ["HKDDistiller", "DISTILL_ONLY_PREFIXES"]

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
        # Multiplier of all distillation losses; the DistillationHook sets it every iteration.
        self.distill_scale = 1.0
        # Unweighted per-term statistics of the last training step (floats or 0-dim tensors).
        self.distill_stats: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        student_shapes = ret["backbone"].output_shape()
        teacher = build_teacher(cfg) if cfg.MODEL.DISTILL.TERMS else None
        teacher_shapes = teacher.detector.backbone.output_shape() if teacher is not None else {}
        terms = build_distill_terms(cfg, student_shapes, teacher_shapes)
        if teacher is not None and not terms:
            logger.info("Every distillation weight is 0: the teacher will not be run")
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
        rpn_head = self.proposal_generator.rpn_head
        with _record_outputs(rpn_head, "rpn" in self.teacher_needs) as rpn_outputs:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
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
            scale=self.distill_scale,
        )
        if "rpn" in self.teacher_needs:
            ctx.student_rpn = self._student_rpn(features, rpn_outputs)
        self._fill_teacher(ctx, batched_inputs)
        self._scale_detector_losses(losses)
        losses.update(self._distill_losses(ctx))
        return losses

    def _scale_detector_losses(self, losses: Dict[str, torch.Tensor]) -> None:
        """Apply the terms' factors on detection losses, following the schedule: a factor f
        becomes ``1 - scale * (1 - f)`` (the plain detector at scale 0, the term's at 1)."""
        for term in self.distill_terms:
            for name, factor in term.detector_loss_scales.items():
                losses[name] = losses[name] * (1.0 - self.distill_scale * (1.0 - factor))

    def _student_rpn(self, features: Dict[str, torch.Tensor], rpn_outputs: list) -> Dict[str, list]:
        """The student's RPN head outputs recorded during its RPN forward, and its anchors."""
        objectness, deltas = rpn_outputs[-1]
        rpn = self.proposal_generator
        anchors = rpn.anchor_generator([features[f] for f in rpn.in_features])
        return {"objectness_logits": objectness, "anchor_deltas": deltas, "anchors": anchors}

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
        """Call every term, scale its losses by ``distill_scale`` and keep its statistics."""
        losses: Dict[str, torch.Tensor] = {}
        for term in self.distill_terms:
            for name, value in term(ctx).items():
                if name in losses:
                    raise KeyError(f"Two distillation terms report the same loss '{name}'")
                losses[name] = value * self.distill_scale
        self.distill_stats = {
            k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in ctx.stats.items()
        }
        return losses


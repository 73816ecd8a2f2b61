"""The three terms of hierarchical knowledge distillation (Chen et al., ICIP 2019).

* ``PyramidDistill`` (``loss_pd``): FPN maps, ``L_PD = sum_l mean((P_s,l - P_t,l)^2)`` over the
  levels ``MODEL.DISTILL.PYRAMID.IN_FEATURES`` (P2..P5) (``REDUCTION "level_sum"``), or one mean
  over every element of those levels (``"element_mean"``; the paper's ``1/N_PD`` allows both);
* ``RegionDistill`` (``loss_rd``): pooled RoI features on the shared sampled RoIs,
  ``L_RD = mean((R_s - R_t)^2)`` over all (R, C, S, S) elements;
* ``LogitDistill`` (``loss_ld``): box-head class logits on the same RoIs,
  ``L_LD = mean((G_s - G_t)^2)`` over all (R, K+1) elements.

Each returns the raw ``L``; the distiller multiplies it by the term's weight (lambda) and its
schedule factor. The raw ``L`` values also go to ``ctx.stats`` as ``distill/pd`` (plus
``distill/pd_<level>``), ``distill/rd`` and ``distill/ld``.

When the student's channels differ from the teacher's, a trainable 1x1 conv on the student side
(:func:`~hkd_d2.modeling.distill.common.feature_adapter`, ``MODEL.DISTILL.ADAPT_CHANNELS``) maps
them to the teacher's; it exists only for training.
"""
from typing import Dict, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes
from .common import feature_adapter, level_adapters, mse

__all__ = ["PyramidDistill", "RegionDistill", "LogitDistill"]


def _roi_channels(cfg: CfgNode, shapes: Dict[str, ShapeSpec], who: str) -> int:
    """Channels of the pooled RoI features (those of the ROI heads' input levels)."""
    channels = {shapes[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES if f in shapes}
    if len(channels) != 1:
        raise ValueError(
            f"RegionDistill: {who} levels {cfg.MODEL.ROI_HEADS.IN_FEATURES} need one channel count, "
            f"got {sorted(channels)}"
        )
    return channels.pop()


def _element_mean(per_level: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor]) -> torch.Tensor:
    """One mean over all elements: per-level means weighted by each level's element count."""
    counts = torch.tensor([float(teacher[f].numel()) for f in per_level], device=next(iter(per_level.values())).device)
    return (torch.stack(list(per_level.values())) * counts).sum() / counts.sum()


# MODEL.DISTILL.PYRAMID.REDUCTION -> fn(per-level means, teacher maps) -> L_PD.
PD_REDUCTIONS = {
    "level_sum": lambda per_level, teacher: torch.stack(list(per_level.values())).sum(),
    "element_mean": _element_mean,
}


@DISTILL_TERM_REGISTRY.register()
class PyramidDistill(DistillTerm):
    """MSE between student and teacher FPN maps, summed over levels."""

    CONFIG_NODE = "MODEL.DISTILL.PYRAMID"
    teacher_needs = frozenset({"features"})

    class Defaults:
        # lambda_PD: weight of the FPN-map MSE (paper's pyramid distillation).
        WEIGHT = 1.0
        # FPN levels compared by pyramid distillation.
        IN_FEATURES = ["p2", "p3", "p4", "p5"]
        # How L_PD reduces over levels: "level_sum" (sum of per-level means) or "element_mean"
        # (one mean over every element of every level, which weights P2 by its ~75% share).
        REDUCTION = "level_sum"

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        self.in_features = list(cfg.MODEL.DISTILL.PYRAMID.IN_FEATURES)
        self.reduction = cfg.MODEL.DISTILL.PYRAMID.REDUCTION
        if self.reduction not in PD_REDUCTIONS:
            raise ValueError(f"MODEL.DISTILL.PYRAMID.REDUCTION '{self.reduction}' is not one of {sorted(PD_REDUCTIONS)}")
        self.adapters = level_adapters(cfg, "PyramidDistill", self.in_features, student_shapes, teacher_shapes)

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        student, teacher = ctx.student.features, ctx.teacher.features
        per_level = {
            f: mse(self.adapters[f](student[f]), teacher[f], f"PyramidDistill {f}") for f in self.in_features
        }
        loss = PD_REDUCTIONS[self.reduction](per_level, teacher)
        ctx.stats.update({f"distill/pd_{f}": v.detach() for f, v in per_level.items()})
        ctx.stats["distill/pd"] = loss.detach()
        return {"loss_pd": loss}


class _SharedRoIMSE(DistillTerm):
    """``L = mean((S - T)^2)`` over all elements of a student and a teacher output on the shared
    sampled RoIs (:meth:`outputs`); returns ``loss_<SHORT_NAME>`` = ``L`` and logs it as
    ``distill/<SHORT_NAME>``."""

    # Names the loss and the statistic, e.g. "rd".
    SHORT_NAME: str
    teacher_needs = frozenset({"roi"})

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)

    def outputs(self, ctx: DistillContext) -> Tuple[torch.Tensor, torch.Tensor]:
        """The student's output (through its adapter, if any) and the teacher's, of one shape."""
        raise NotImplementedError

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        loss = mse(*self.outputs(ctx), type(self).__name__)
        ctx.stats[f"distill/{self.SHORT_NAME}"] = loss.detach()
        return {f"loss_{self.SHORT_NAME}": loss}


@DISTILL_TERM_REGISTRY.register()
class RegionDistill(_SharedRoIMSE):
    """MSE between student and teacher pooled RoI features (R, C, S, S) on the shared RoIs, the
    student's through a 1x1 conv when its channels differ from the teacher's."""

    CONFIG_NODE = "MODEL.DISTILL.REGION"
    SHORT_NAME = "rd"

    class Defaults:
        # lambda_RD: weight of the MSE between pooled RoI features on shared RoIs.
        WEIGHT = 1.0

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg, student_shapes, teacher_shapes)
        self.adapter = feature_adapter(
            cfg,
            _roi_channels(cfg, student_shapes, "student"),
            _roi_channels(cfg, teacher_shapes, "teacher"),
            "RegionDistill",
        )

    def outputs(self, ctx: DistillContext) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.adapter(ctx.student.roi.features), ctx.teacher.roi.features


@DISTILL_TERM_REGISTRY.register()
class LogitDistill(_SharedRoIMSE):
    """MSE between student and teacher box-head class logits (R, K+1) on the shared RoIs."""

    CONFIG_NODE = "MODEL.DISTILL.LOGIT"
    SHORT_NAME = "ld"

    class Defaults:
        # lambda_LD: weight of the MSE between box-head class logits on shared RoIs.
        WEIGHT = 1.0

    def outputs(self, ctx: DistillContext) -> Tuple[torch.Tensor, torch.Tensor]:
        return ctx.student.roi.scores, ctx.teacher.roi.scores

"""The three terms of hierarchical knowledge distillation (Chen et al., ICIP 2019).

* ``PyramidDistill`` (``loss_pd``): FPN maps, ``L_PD = sum_l mean((P_s,l - P_t,l)^2)`` over the
  levels ``MODEL.DISTILL.PYRAMID.IN_FEATURES`` (P2..P5) (``REDUCTION "level_sum"``), or one mean
  over every element of those levels (``"element_mean"``; the paper's ``1/N_PD`` allows both);
* ``RegionDistill`` (``loss_rd``): pooled RoI features on the shared sampled RoIs,
  ``L_RD = mean((R_s - R_t)^2)`` over all (R, C, S, S) elements;
* ``LogitDistill`` (``loss_ld``): box-head class logits on the same RoIs,
  ``L_LD = mean((G_s - G_t)^2)`` over all (R, K+1) elements.

Each returns ``weight * L``; the meta-architecture applies the schedule scale. The raw
``L`` values go to ``ctx.stats`` as ``distill/pd`` (plus ``distill/pd_<level>``),
``distill/rd`` and ``distill/ld``.

When the student's channels differ from the teacher's, a trainable 1x1 conv on the student side
(:func:`~hkd_d2.modeling.distill.common.feature_adapter`, ``MODEL.DISTILL.ADAPT_CHANNELS``) maps
them to the teacher's; it exists only for training.
"""
from typing import Dict

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

    WEIGHT_KEY = "MODEL.DISTILL.PYRAMID.WEIGHT"
    teacher_needs = frozenset({"features"})

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        cfg.MODEL.DISTILL.PYRAMID = CfgNode()
        # lambda_PD: weight of the FPN-map MSE (paper's pyramid distillation).
        cfg.MODEL.DISTILL.PYRAMID.WEIGHT = 1.0
        # FPN levels compared by pyramid distillation.
        cfg.MODEL.DISTILL.PYRAMID.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        # How L_PD reduces over levels: "level_sum" (sum of per-level means) or "element_mean"
        # (one mean over every element of every level, which weights P2 by its ~75% share).
        cfg.MODEL.DISTILL.PYRAMID.REDUCTION = "level_sum"

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        self.in_features = list(cfg.MODEL.DISTILL.PYRAMID.IN_FEATURES)
        self.reduction = cfg.MODEL.DISTILL.PYRAMID.REDUCTION
        if self.reduction not in PD_REDUCTIONS:
            raise ValueError(f"MODEL.DISTILL.PYRAMID.REDUCTION '{self.reduction}' is not one of {sorted(PD_REDUCTIONS)}")
        self.adapters = level_adapters(cfg, "PyramidDistill", self.in_features, student_shapes, teacher_shapes)

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        per_level = {
            f: mse(self.adapters[f](ctx.student_features[f]), ctx.teacher_features[f], f"PyramidDistill {f}")
            for f in self.in_features
        }
        loss = PD_REDUCTIONS[self.reduction](per_level, ctx.teacher_features)
        ctx.stats.update({f"distill/pd_{f}": v.detach() for f, v in per_level.items()})
        ctx.stats["distill/pd"] = loss.detach()
        return {"loss_pd": self.weight * loss}


@DISTILL_TERM_REGISTRY.register()
class RegionDistill(DistillTerm):
    """MSE between student and teacher pooled RoI features on the shared RoIs."""

    WEIGHT_KEY = "MODEL.DISTILL.REGION.WEIGHT"
    teacher_needs = frozenset({"roi"})

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        cfg.MODEL.DISTILL.REGION = CfgNode()
        # lambda_RD: weight of the MSE between pooled RoI features on shared RoIs.
        cfg.MODEL.DISTILL.REGION.WEIGHT = 1.0

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        self.adapter = feature_adapter(
            cfg,
            _roi_channels(cfg, student_shapes, "student"),
            _roi_channels(cfg, teacher_shapes, "teacher"),
            "RegionDistill",
        )

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        loss = mse(self.adapter(ctx.student_roi_features), ctx.teacher_roi_features, "RegionDistill")
        ctx.stats["distill/rd"] = loss.detach()
        return {"loss_rd": self.weight * loss}


@DISTILL_TERM_REGISTRY.register()
class LogitDistill(DistillTerm):
    """MSE between student and teacher box-head class logits (R, K+1) on the shared RoIs."""

    WEIGHT_KEY = "MODEL.DISTILL.LOGIT.WEIGHT"
    teacher_needs = frozenset({"roi"})

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        cfg.MODEL.DISTILL.LOGIT = CfgNode()
        # lambda_LD: weight of the MSE between box-head class logits on shared RoIs.
        cfg.MODEL.DISTILL.LOGIT.WEIGHT = 1.0

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        loss = mse(ctx.student_predictions[0], ctx.teacher_predictions[0], "LogitDistill")
        ctx.stats["distill/ld"] = loss.detach()
        return {"loss_ld": self.weight * loss}

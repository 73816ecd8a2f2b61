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
(``MODEL.DISTILL.ADAPT_CHANNELS``) maps them to the teacher's; it exists only for training.
"""
from typing import Dict

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm

__all__ = ["PyramidDistill", "RegionDistill", "LogitDistill", "channel_adapter"]


def channel_adapter(cfg: CfgNode, in_channels: int, out_channels: int, what: str) -> nn.Module:
    """Identity when the channels agree, else a 1x1 conv (when ``MODEL.DISTILL.ADAPT_CHANNELS``)."""
    if in_channels == out_channels:
        return nn.Identity()
    if not cfg.MODEL.DISTILL.ADAPT_CHANNELS:
        raise ValueError(
            f"{what}: student has {in_channels} channels, teacher {out_channels}; "
            "set MODEL.DISTILL.ADAPT_CHANNELS True or match FPN.OUT_CHANNELS"
        )
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    weight_init.c2_msra_fill(conv)
    return conv


def mse(student: torch.Tensor, teacher: torch.Tensor, what: str) -> torch.Tensor:
    """Mean squared difference over all elements (0, still in the graph, when empty)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} differs from teacher's {tuple(teacher.shape)}"
        )
    if student.numel() == 0:
        return student.sum() * 0.0
    return F.mse_loss(student, teacher, reduction="mean")


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

    def __init__(self, cfg: CfgNode, student_shapes: Dict[str, ShapeSpec], teacher_shapes: Dict[str, ShapeSpec]):
        super().__init__(cfg.MODEL.DISTILL.PYRAMID.WEIGHT)
        self.in_features = list(cfg.MODEL.DISTILL.PYRAMID.IN_FEATURES)
        self.reduction = cfg.MODEL.DISTILL.PYRAMID.REDUCTION
        if self.reduction not in PD_REDUCTIONS:
            raise ValueError(f"MODEL.DISTILL.PYRAMID.REDUCTION '{self.reduction}' is not one of {sorted(PD_REDUCTIONS)}")
        self.adapters = nn.ModuleDict()
        if self.weight == 0:
            return
        for f in self.in_features:
            if f not in student_shapes or f not in teacher_shapes:
                raise ValueError(f"PyramidDistill: level '{f}' is not an output of both backbones")
            s, t = student_shapes[f], teacher_shapes[f]
            if s.stride != t.stride:
                raise ValueError(f"PyramidDistill: level '{f}' has stride {s.stride} vs teacher {t.stride}")
            self.adapters[f] = channel_adapter(cfg, s.channels, t.channels, f"PyramidDistill {f}")

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

    def __init__(self, cfg: CfgNode, student_shapes: Dict[str, ShapeSpec], teacher_shapes: Dict[str, ShapeSpec]):
        super().__init__(cfg.MODEL.DISTILL.REGION.WEIGHT)
        self.adapter = nn.Identity()
        if self.weight == 0:
            return
        self.adapter = channel_adapter(
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

    def __init__(self, cfg: CfgNode, student_shapes: Dict[str, ShapeSpec], teacher_shapes: Dict[str, ShapeSpec]):
        super().__init__(cfg.MODEL.DISTILL.LOGIT.WEIGHT)

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        loss = mse(ctx.student_predictions[0], ctx.teacher_predictions[0], "LogitDistill")
        ctx.stats["distill/ld"] = loss.detach()
        return {"loss_ld": self.weight * loss}

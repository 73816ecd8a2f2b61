"""PKD: Cao et al. 2022, "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient".

Each channel of the student's and the teacher's FPN maps is standardised over (N, H, W)
(zero mean, unit population variance); the loss of a level is half the mean squared error of
the standardised maps, which equals ``1 - r`` averaged over channels, ``r`` being the Pearson
correlation between the two channels. Levels are summed and multiplied by ``WEIGHT`` (6).

Student maps with another channel count than the teacher's go through a 1x1 conv first
(:func:`~hkd_d2.modeling.distill.hkd.channel_adapter`, ``MODEL.DISTILL.ADAPT_CHANNELS``); PKD
itself assumes equal widths.
"""
from typing import Dict

import torch
from torch import nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm
from .hkd import channel_adapter

__all__ = ["PKDDistill", "standardize_channels", "pearson_loss"]


def standardize_channels(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, C, H, W) -> same shape, each channel minus its mean over (N, H, W), over its std + eps."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True).sqrt()
    return (x - mean) / (std + eps)


def pearson_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Half the MSE of the channel-standardised maps, both (N, C, H, W); a scalar in [0, 2]."""
    if student.shape != teacher.shape:
        raise ValueError(f"PKD needs equal student/teacher map shapes, got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    diff = standardize_channels(student, eps) - standardize_channels(teacher, eps)
    return 0.5 * diff.pow(2).mean()


@DISTILL_TERM_REGISTRY.register()
class PKDDistill(DistillTerm):
    """Pearson-correlation feature distillation on FPN levels.

    Loss: ``loss_pkd`` = WEIGHT * sum over levels; stats ``distill/pkd_<level>`` (unweighted ``1 - r``).
    """

    WEIGHT_KEY = "MODEL.DISTILL.PKD.WEIGHT"

    teacher_needs = frozenset({"features"})

    def __init__(
        self,
        cfg: CfgNode,
        student_shapes: Dict[str, ShapeSpec],
        teacher_shapes: Dict[str, ShapeSpec],
    ):
        c = cfg.MODEL.DISTILL.PKD
        super().__init__(c.WEIGHT)
        self.eps = c.EPS
        self.in_features = list(c.IN_FEATURES)
        for f in self.in_features:
            if f not in student_shapes or f not in teacher_shapes:
                raise ValueError(
                    f"MODEL.DISTILL.PKD.IN_FEATURES: '{f}' is not an output of both backbones "
                    f"(student {sorted(student_shapes)}, teacher {sorted(teacher_shapes)})"
                )
        self.adapters = nn.ModuleDict(
            {
                f: channel_adapter(
                    cfg, student_shapes[f].channels, teacher_shapes[f].channels, f"PKD level '{f}'"
                )
                for f in self.in_features
            }
        )

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        total = 0.0
        for f in self.in_features:
            student = self.adapters[f](ctx.student_features[f])
            level = pearson_loss(student, ctx.teacher_features[f], self.eps)
            ctx.stats[f"distill/pkd_{f}"] = level.detach()
            total = total + level
        return {"loss_pkd": self.weight * total}

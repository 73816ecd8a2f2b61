"""PKD: Cao et al. 2022, "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient".

Each channel of the student's and the teacher's FPN maps is standardised over (N, H, W)
(zero mean, unit sample standard deviation, as MMRazor's ``torch.std``); the loss of a level is
half the mean squared error of the standardised maps, which is ``(1 - r) * (M - 1) / M``
averaged over channels, ``r`` being the Pearson correlation between the two channels and
``M = N*H*W``. Levels are summed and multiplied by ``WEIGHT`` (6).

Reference: the authors' MMRazor implementation (``PKDLoss``; Faster R-CNN recipe: P2-P5,
``loss_weight`` 6). Matches: standardisation per channel over (N, H, W) with the sample std plus EPS, half MSE, sum over
levels, weight 6, levels P2-P5. Differs: student maps with another channel count than the
teacher's go through a 1x1 conv first
(:func:`~hkd_d2.modeling.distill.common.feature_adapter`, ``MODEL.DISTILL.ADAPT_CHANNELS``);
PKD itself assumes equal widths.
"""
from typing import Dict

import torch
from detectron2.config import CfgNode

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes
from .common import level_adapters

__all__ = ["PKDDistill", "standardize_channels", "pearson_loss"]


def standardize_channels(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, C, H, W) -> same shape, each channel minus its mean over (N, H, W), over its sample
    standard deviation + eps."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
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

    Loss: ``loss_pkd`` = sum over levels (times WEIGHT, by the distiller); stats ``distill/pkd_<level>`` (unweighted, about ``1 - r``).
    """

    CONFIG_NODE = "MODEL.DISTILL.PKD"
    teacher_needs = frozenset({"features"})

    class Defaults:
        # Weight of each level's Pearson-correlation loss, summed over levels (paper: 6).
        WEIGHT = 6.0
        # FPN levels distilled (MMRazor's Faster R-CNN recipe: P2-P5).
        IN_FEATURES = ["p2", "p3", "p4", "p5"]
        # Added to each channel's standard deviation before dividing by it.
        EPS = 1e-6

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        c = cfg.MODEL.DISTILL.PKD
        self.eps = c.EPS
        self.in_features = list(c.IN_FEATURES)
        self.adapters = level_adapters(cfg, "MODEL.DISTILL.PKD.IN_FEATURES", self.in_features, student_shapes, teacher_shapes)

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        total = 0.0
        for f in self.in_features:
            student = self.adapters[f](ctx.student.features[f])
            level = pearson_loss(student, ctx.teacher.features[f], self.eps)
            ctx.stats[f"distill/pkd_{f}"] = level.detach()
            total = total + level
        return {"loss_pkd": total}

"""FGFI: Wang et al. 2019, "Distilling Object Detectors with Fine-grained Feature Imitation".

The student imitates the teacher only near objects. For every ground-truth box, the IoU with
every anchor (all levels together) is computed; anchors with IoU above
``psi * (that box's best anchor IoU)`` are kept, and a feature-map location is in the imitation
mask ``I`` when any of its anchors is kept for any box. The loss, through a 1x1 adaptation conv
``A`` per level, is

    L = sum_levels sum_(n,h,w) I * sum_c (A(s) - t)^2  /  (2 * N_p),   N_p = number of mask locations,

and is exactly 0 (with zero, defined gradients) when the mask is empty.

Anchors come from Detectron2's own anchor generator, built from ``MODEL.ANCHOR_GENERATOR`` for
``MODEL.RPN.IN_FEATURES`` as the student's RPN builds it. Ignore boxes (``gt_ignore``) make no mask.

Reference: the authors' code (twangnh/Distilling-Object-Detectors). Matches: the mask rule
(psi 0.5 of each box's best anchor IoU, anchors of all levels together), the normalisation by
twice the mask locations, the weight 0.01, a 3x3 adaptation conv (``ADAPTER_KERNEL_SIZE``) and
imitation from iteration 400 (``START_ITER``). Differs on purpose: the adapter has no ReLU
(the authors' follows a ReLU backbone stage; FPN maps are signed, a ReLU would clip the
teacher's negative half), and the imitated maps are the RPN's FPN levels rather than one
backbone stage.
"""
from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.structures import Boxes, pairwise_iou

from ..ignore import split_ignored
from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes
from .common import level_adapters

__all__ = ["FGFIDistill", "imitation_masks", "masked_imitation_loss"]


def imitation_masks(
    gt_boxes: List[Boxes],
    anchors: List[Boxes],
    grid_sizes: List[torch.Size],
    threshold_ratio: float = 0.5,
) -> List[torch.Tensor]:
    """FGFI's imitation masks.

    Args:
        gt_boxes: per image, its M_n ground-truth boxes.
        anchors: per level, (H_l*W_l*A, 4) anchors in Detectron2's order (location-major).
        grid_sizes: per level, (H_l, W_l).
        threshold_ratio: psi.
    Returns:
        Per level, a bool mask (N, H_l, W_l).
    """
    counts = [len(a) for a in anchors]
    all_anchors = Boxes.cat(anchors)
    per_image = []
    for boxes in gt_boxes:
        if len(boxes) == 0:
            per_image.append(torch.zeros(len(all_anchors), dtype=torch.bool, device=all_anchors.device))
            continue
        iou = pairwise_iou(boxes.to(all_anchors.device), all_anchors)  # (M, sum HWA)
        best = iou.max(dim=1, keepdim=True).values
        per_image.append(((iou > threshold_ratio * best) & (iou > 0)).any(dim=0))
    hits = torch.stack(per_image)  # (N, sum HWA)
    masks = []
    for level_hits, (h, w) in zip(hits.split(counts, dim=1), grid_sizes):
        masks.append(level_hits.view(len(gt_boxes), h, w, -1).any(dim=3))
    return masks


def masked_imitation_loss(
    student: List[torch.Tensor], teacher: List[torch.Tensor], masks: List[torch.Tensor]
) -> torch.Tensor:
    """``sum I * ||s - t||^2 / (2 * max(N_p, 1))`` over levels.

    Args:
        student, teacher: per level (N, C, H, W) (student already adapted).
        masks: per level bool (N, H, W).
    """
    total = sum(((s - t).pow(2).sum(dim=1) * m).sum() for s, t, m in zip(student, teacher, masks))
    num = sum(int(m.sum()) for m in masks)
    return total / (2.0 * max(num, 1))


@DISTILL_TERM_REGISTRY.register()
class FGFIDistill(DistillTerm):
    """Fine-grained feature imitation near anchors that match ground truth well.

    Loss: ``loss_fgfi`` = L (times WEIGHT, by the distiller); stats ``distill/fgfi_imitation``, ``distill/fgfi_mask_locations``.
    """

    CONFIG_NODE = "MODEL.DISTILL.FGFI"
    teacher_needs = frozenset({"features"})

    class Defaults:
        # Weight of the fine-grained feature imitation loss (paper: 0.01).
        WEIGHT = 0.01
        # psi: an anchor imitates when its IoU with a gt box > psi * that box's best anchor IoU.
        THRESHOLD_RATIO = 0.5
        # FPN levels imitated (a subset of MODEL.RPN.IN_FEATURES, whose anchors define the mask).
        IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        # Kernel size of the adaptation conv (authors: 3; no ReLU after it, FPN maps are signed).
        ADAPTER_KERNEL_SIZE = 3
        # Iteration from which the imitation loss is on (authors: 400).
        START_ITER = 400

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        c = cfg.MODEL.DISTILL.FGFI
        super().__init__(cfg, start_iter=c.START_ITER)
        self.threshold_ratio = c.THRESHOLD_RATIO
        self.rpn_features = list(cfg.MODEL.RPN.IN_FEATURES)
        self.in_features = list(c.IN_FEATURES)
        outside = [f for f in self.in_features if f not in self.rpn_features]
        if outside:
            raise ValueError(
                f"MODEL.DISTILL.FGFI.IN_FEATURES: {outside} not in MODEL.RPN.IN_FEATURES {self.rpn_features}"
            )
        self.anchor_generator = build_anchor_generator(cfg, [student_shapes[f] for f in self.rpn_features])
        self.adapters = level_adapters(
            cfg, "MODEL.DISTILL.FGFI.IN_FEATURES", self.in_features, student_shapes, teacher_shapes,
            kernel_size=c.ADAPTER_KERNEL_SIZE, always=True,
        )

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        student, teacher = ctx.student.features, ctx.teacher.features
        features = [student[f] for f in self.rpn_features]
        anchors = self.anchor_generator(features)
        masks = imitation_masks(
            [split_ignored(x)[0].gt_boxes for x in ctx.gt_instances],
            anchors,
            [x.shape[-2:] for x in features],
            self.threshold_ratio,
        )
        by_level = dict(zip(self.rpn_features, masks))
        loss = masked_imitation_loss(
            [self.adapters[f](student[f]) for f in self.in_features],
            [teacher[f] for f in self.in_features],
            [by_level[f] for f in self.in_features],
        )
        ctx.stats["distill/fgfi_imitation"] = loss.detach()
        ctx.stats["distill/fgfi_mask_locations"] = float(
            sum(int(by_level[f].sum()) for f in self.in_features)
        )
        return {"loss_fgfi": loss}

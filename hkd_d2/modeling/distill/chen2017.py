"""Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation".

Three pieces, each applied to the box head (RCN) and, optionally, to the RPN:

* **Soft classification.** ``L_cls = mu * L_hard + (1 - mu) * L_soft`` with
  ``L_soft = -sum_c w_c * P_t^c * log P_s^c`` and ``P = softmax(z / T)``; the background class
  (the LAST index K of Detectron2's scores) weighs ``w_0 = BG_WEIGHT``, the others 1. For the
  RPN, an objectness logit ``z`` is the 2-class distribution ``softmax([z, 0] / T)``.
* **Teacher-bounded regression.** ``L_b = ||R_s - y||^2`` if ``||R_s - y||^2 + m > ||R_t - y||^2``
  else 0, added to the detector's smooth L1 as ``L_sL1 + nu * L_b``; on foreground RoIs (targets
  from the proposals' matched ``gt_boxes``) and on positive anchors (targets from Detectron2's
  RPN matcher against the non-ignored ground truth).
* **Hint.** ``||A(V) - Z||^2`` with a 1x1 adaptation conv ``A`` per chosen FPN level.

How ``mu`` meets the detector's own losses: the hard losses ``L_hard`` (``loss_cls``,
``loss_rpn_cls``) and ``L_sL1`` (``loss_box_reg``, ``loss_rpn_loc``) are computed by the student
detector itself. This term returns ``(1 - mu) * L_soft`` and ``nu * L_b`` and announces, in
:attr:`Chen2017Distill.detector_loss_scales`, that the detector's ``loss_cls`` (and
``loss_rpn_cls`` when the RPN part is on) must be multiplied by ``mu``; the distillation
meta-architecture applies it. Without that the sum is ``L_hard + (1 - mu) * L_soft``.

Normalisation (the paper gives none): the soft CE is averaged over the sampled RoIs, and over
the anchors the RPN matcher labels positive or negative; ``L_b`` is summed over foreground RoIs
and divided by the number of sampled RoIs (as Detectron2's ``loss_box_reg``), and over positive
anchors divided by ``RPN.BATCH_SIZE_PER_IMAGE * N`` (as ``loss_rpn_loc``); the hint is the mean
squared error per element, averaged over levels.

Simplification: the RPN soft and bounded losses use every matched anchor rather than the RPN's
random sample of 256 per image (that sample is internal to the RPN's loss).
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm

__all__ = [
    "Chen2017Distill",
    "weighted_soft_cross_entropy",
    "teacher_bounded_l2",
    "flatten_rpn_outputs",
    "non_ignored_boxes",
]


def weighted_soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_weights: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``mean_r -sum_c w_c * softmax(z_t/T)_c * log softmax(z_s/T)_c``.

    Args:
        student_logits, teacher_logits: (R, C).
        class_weights: (C,).
    Returns:
        Scalar; 0 (connected to the graph) when R == 0.
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return -(class_weights * p_t * log_p_s).sum(dim=1).mean()


def teacher_bounded_l2(
    student_deltas: torch.Tensor,
    teacher_deltas: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 0.0,
) -> torch.Tensor:
    """Per-row teacher-bounded loss ``||R_s - y||^2`` if ``||R_s - y||^2 + m > ||R_t - y||^2``, else 0.

    Args:
        student_deltas, teacher_deltas, targets: (M, 4).
    Returns:
        (M,) losses.
    """
    student_err = (student_deltas - targets).pow(2).sum(dim=1)
    teacher_err = (teacher_deltas - targets).pow(2).sum(dim=1)
    return torch.where(student_err + margin > teacher_err, student_err, torch.zeros_like(student_err))


def flatten_rpn_outputs(objectness: List[torch.Tensor], deltas: List[torch.Tensor]):
    """Per-level RPN head outputs to one row per anchor, in the anchor generator's order.

    Args:
        objectness: per level (N, A, H, W).
        deltas: per level (N, A*4, H, W).
    Returns:
        objectness (N, sum HWA) and deltas (N, sum HWA, 4).
    """
    logits = cat([o.permute(0, 2, 3, 1).flatten(1) for o in objectness], dim=1)
    boxes = cat(
        [
            d.view(d.shape[0], -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, 3)
            for d in deltas
        ],
        dim=1,
    )
    return logits, boxes


def non_ignored_boxes(instances: Instances) -> Boxes:
    """The ``gt_boxes`` of ``instances`` without those flagged ``gt_ignore``."""
    if instances.has("gt_ignore"):
        return instances.gt_boxes[~instances.gt_ignore]
    return instances.gt_boxes


@DISTILL_TERM_REGISTRY.register()
class Chen2017Distill(DistillTerm):
    """Soft CE + teacher-bounded regression (box head, RPN) + hint losses of Chen et al. 2017.

    Losses (all multiplied by ``WEIGHT``): ``loss_chen2017_cls`` ``(1-mu) L_soft``,
    ``loss_chen2017_reg`` ``nu L_b`` (box head), ``loss_chen2017_rpn_cls``,
    ``loss_chen2017_rpn_reg`` (RPN), ``loss_chen2017_hint`` ``gamma L_hint``.
    """

    WEIGHT_KEY = "MODEL.DISTILL.CHEN2017.WEIGHT"

    def __init__(
        self,
        cfg: CfgNode,
        student_shapes: Dict[str, ShapeSpec],
        teacher_shapes: Dict[str, ShapeSpec],
    ):
        c = cfg.MODEL.DISTILL.CHEN2017
        super().__init__(c.WEIGHT)
        self.mu = c.MU
        self.nu = c.NU
        self.temperature = c.TEMPERATURE
        self.bg_weight = c.BG_WEIGHT
        self.margin = c.MARGIN
        self.hint_weight = c.HINT_WEIGHT
        self.box_head = c.BOX_HEAD
        self.rpn = c.RPN
        self.num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        self.box2box_transform = Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS)
        self.rpn_box2box_transform = Box2BoxTransform(weights=cfg.MODEL.RPN.BBOX_REG_WEIGHTS)
        self.anchor_matcher = Matcher(
            cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS, allow_low_quality_matches=True
        )
        self.rpn_batch_size_per_image = cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE
        hint_features = list(c.HINT_FEATURES) if self.hint_weight != 0 else []
        for f in hint_features:
            if f not in student_shapes or f not in teacher_shapes:
                raise ValueError(
                    f"MODEL.DISTILL.CHEN2017.HINT_FEATURES: '{f}' is not an output of both "
                    f"backbones (student {sorted(student_shapes)}, teacher {sorted(teacher_shapes)})"
                )
        self.adapters = nn.ModuleDict(
            {
                f: nn.Conv2d(student_shapes[f].channels, teacher_shapes[f].channels, kernel_size=1)
                for f in hint_features
            }
        )
        needs = set()
        if hint_features:
            needs.add("features")
        if self.box_head:
            needs.add("roi")
        if self.rpn:
            needs.add("rpn")
        self.teacher_needs = frozenset(needs)

    @property
    def detector_loss_scales(self) -> Dict[str, float]:
        """Factors for the student detector's own losses: ``mu`` on the hard classification
        losses this term softens (see the module docstring)."""
        scales = {}
        if self.box_head:
            scales["loss_cls"] = self.mu
        if self.rpn:
            scales["loss_rpn_cls"] = self.mu
        return scales

    def _class_weights(self, num_columns: int, like: torch.Tensor) -> torch.Tensor:
        """(num_columns,) ones with ``bg_weight`` in the last (background) column."""
        weights = torch.ones(num_columns, dtype=like.dtype, device=like.device)
        weights[-1] = self.bg_weight
        return weights

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        losses = {}
        if self.box_head:
            losses.update(self._box_head_losses(ctx))
        if self.rpn:
            losses.update(self._rpn_losses(ctx))
        if len(self.adapters):
            losses["loss_chen2017_hint"] = self.hint_weight * self._hint_loss(ctx)
        return {k: self.weight * v for k, v in losses.items()}

    def _box_head_losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        scores_s, deltas_s = ctx.student_predictions
        scores_t, deltas_t = ctx.teacher_predictions
        soft = weighted_soft_cross_entropy(
            scores_s, scores_t, self._class_weights(scores_s.shape[1], scores_s), self.temperature
        )
        bounded = self._box_head_bounded(ctx.proposals, deltas_s, deltas_t)
        ctx.stats["distill/chen2017_soft_ce"] = soft.detach()
        ctx.stats["distill/chen2017_bounded"] = bounded.detach()
        return {
            "loss_chen2017_cls": (1.0 - self.mu) * soft,
            "loss_chen2017_reg": self.nu * bounded,
        }

    def _box_head_bounded(
        self, proposals: List[Instances], deltas_s: torch.Tensor, deltas_t: torch.Tensor
    ) -> torch.Tensor:
        """Bounded L2 summed over foreground RoIs / number of RoIs (R)."""
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        if not fg.any():
            return deltas_s.sum() * 0.0
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)[fg]
        # Images without ground truth have no gt_boxes; all their RoIs are background anyway.
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
            dim=0,
        )[fg]
        targets = self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)
        fg_classes = gt_classes[fg]
        student = self._class_deltas(deltas_s, fg, fg_classes)
        teacher = self._class_deltas(deltas_t, fg, fg_classes)
        bounded = teacher_bounded_l2(student, teacher, targets, self.margin)
        return bounded.sum() / max(gt_classes.numel(), 1)

    def _class_deltas(self, deltas: torch.Tensor, fg: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The (M, 4) deltas of each foreground RoI for its gt class (or class-agnostic ones)."""
        if deltas.shape[1] == 4:
            return deltas[fg]
        return deltas.view(deltas.shape[0], -1, 4)[fg, classes]

    def _rpn_losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        logits_s, deltas_s = flatten_rpn_outputs(
            ctx.student_rpn["objectness_logits"], ctx.student_rpn["anchor_deltas"]
        )
        logits_t, deltas_t = flatten_rpn_outputs(
            ctx.teacher_rpn["objectness_logits"], ctx.teacher_rpn["anchor_deltas"]
        )
        anchors = Boxes.cat(ctx.student_rpn["anchors"])
        labels, matched = self._label_anchors(anchors, ctx.gt_instances)
        valid = labels >= 0
        # 2-class distribution per anchor: [foreground, background] with background last.
        two_class_s = torch.stack([logits_s[valid], torch.zeros_like(logits_s[valid])], dim=1)
        two_class_t = torch.stack([logits_t[valid], torch.zeros_like(logits_t[valid])], dim=1)
        soft = weighted_soft_cross_entropy(
            two_class_s, two_class_t, self._class_weights(2, logits_s), self.temperature
        )
        pos = labels == 1
        targets = self.rpn_box2box_transform.get_deltas(
            anchors.tensor.expand(len(labels), -1, -1)[pos], matched[pos]
        )
        bounded = teacher_bounded_l2(deltas_s[pos], deltas_t[pos], targets, self.margin).sum()
        bounded = bounded / (self.rpn_batch_size_per_image * len(labels))
        ctx.stats["distill/chen2017_rpn_soft_ce"] = soft.detach()
        ctx.stats["distill/chen2017_rpn_bounded"] = bounded.detach()
        return {
            "loss_chen2017_rpn_cls": (1.0 - self.mu) * soft,
            "loss_chen2017_rpn_reg": self.nu * bounded,
        }

    @torch.no_grad()
    def _label_anchors(self, anchors: Boxes, gt_instances: List[Instances]):
        """Matcher labels (N, A_total) in {-1, 0, 1} and matched gt boxes (N, A_total, 4)."""
        labels, matched = [], []
        for instances in gt_instances:
            gt = non_ignored_boxes(instances).to(anchors.device)
            idx, label = self.anchor_matcher(pairwise_iou(gt, anchors))
            labels.append(label)
            matched.append(gt.tensor[idx] if len(gt) else torch.zeros_like(anchors.tensor))
        return torch.stack(labels), torch.stack(matched)

    def _hint_loss(self, ctx: DistillContext) -> torch.Tensor:
        per_level = [
            F.mse_loss(adapter(ctx.student_features[f]), ctx.teacher_features[f])
            for f, adapter in self.adapters.items()
        ]
        hint = torch.stack(per_level).mean()
        ctx.stats["distill/chen2017_hint_mse"] = hint.detach()
        return hint

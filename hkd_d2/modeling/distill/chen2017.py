"""Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation".

Three pieces, each applied to the box head (RCN) and, optionally, to the RPN:

* **Soft classification.** ``L_cls = mu * L_hard + (1 - mu) * L_soft`` with
  ``L_soft = -sum_c w_c * P_t^c * log P_s^c`` and ``P = softmax(z / T)``; the background class
  (the LAST index K of Detectron2's scores) weighs ``w_0 = BG_WEIGHT``, the others 1. For the
  RPN, an objectness logit ``z`` is the 2-class distribution ``softmax([z, 0] / T)``.
* **Teacher-bounded regression.** ``L_b = ||R_s - y||^2`` if ``||R_s - y||^2 + m > ||R_t - y||^2``
  else 0, added to the detector's smooth L1 as ``L_sL1 + nu * L_b``; on foreground RoIs (targets
  from the proposals' matched ``gt_boxes``) and on the positive anchors of the student RPN's
  own sampled mini-batch (its labels and matched boxes, ignore regions already -1).
* **Hint.** ``||A(V) - Z||^2`` with an adaptation conv ``A`` per chosen FPN level
  (``ADAPTER_KERNEL_SIZE``, 1x1 by default).

How ``mu`` meets the detector's own losses: the hard losses ``L_hard`` (``loss_cls``,
``loss_rpn_cls``) and ``L_sL1`` (``loss_box_reg``, ``loss_rpn_loc``) are computed by the student
detector itself. This term returns ``(1 - mu) * L_soft`` and ``nu * L_b`` and announces, in
:attr:`Chen2017Distill.detector_loss_scales`, that the detector's ``loss_cls`` (and
``loss_rpn_cls`` when the RPN part is on) must be multiplied by ``mu``; the distillation
meta-architecture applies it. Without that the sum is ``L_hard + (1 - mu) * L_soft``.

Normalisation: as the detector's own losses that each piece is mixed with (the paper applies
its losses to the RPN's and the RCN's mini-batches): the box-head soft CE is averaged over the
sampled RoIs; the RPN soft CE is summed over the RPN's sampled mini-batch (labels 0 and 1,
``RPN.BATCH_SIZE_PER_IMAGE`` per image) and divided by ``RPN.BATCH_SIZE_PER_IMAGE * N``, as
``loss_rpn_cls``; ``L_b`` is summed over foreground RoIs and divided by the number of sampled
RoIs (as ``loss_box_reg``), and over the mini-batch's positive anchors divided by
``RPN.BATCH_SIZE_PER_IMAGE * N`` (as ``loss_rpn_loc``); the hint is the mean squared error per
element, averaged over levels.

Reading the teacher's RPN deltas on the student's anchors and its box deltas on the student's
RoIs needs both to encode boxes alike: the meta-architecture checks that their anchor
generators and ``BBOX_REG_WEIGHTS`` agree.

Reference: Chen et al., NeurIPS 2017 (no code released). Differs on purpose: the hint is
applied to every FPN level listed rather than one guided layer; the RPN's 2-class softmax is
Detectron2's single objectness logit ``z`` read as ``softmax([z, 0])``.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes
from .common import level_adapters, mse

__all__ = [
    "Chen2017Distill",
    "weighted_soft_cross_entropy",
    "teacher_bounded_l2",
    "flatten_rpn_outputs",
]


def weighted_soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_weights: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per row ``-sum_c w_c * softmax(z_t/T)_c * log softmax(z_s/T)_c``.

    Args:
        student_logits, teacher_logits: (R, C).
        class_weights: (C,).
    Returns:
        (R,) losses.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return -(class_weights * p_t * log_p_s).sum(dim=1)


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


@DISTILL_TERM_REGISTRY.register()
class Chen2017Distill(DistillTerm):
    """Soft CE + teacher-bounded regression (box head, RPN) + hint losses of Chen et al. 2017.

    Losses (the distiller multiplies all by ``WEIGHT``): ``loss_chen2017_cls`` ``(1-mu) L_soft``,
    ``loss_chen2017_reg`` ``nu L_b`` (box head), ``loss_chen2017_rpn_cls``,
    ``loss_chen2017_rpn_reg`` (RPN), ``loss_chen2017_hint`` ``gamma L_hint``.
    """

    CONFIG_NODE = "MODEL.DISTILL.CHEN2017"

    class Defaults:
        # Multiplier of every Chen2017Distill loss (1.0 = the paper's formulation).
        WEIGHT = 1.0
        # mu: classification = mu * hard CE + (1 - mu) * soft CE (the detector's loss_cls is the hard CE).
        MU = 0.5
        # T: softmax temperature of teacher and student class scores in the soft CE.
        TEMPERATURE = 1.0
        # w_0: weight of the background class in the soft CE (other classes weigh 1).
        BG_WEIGHT = 1.5
        # nu: weight of the teacher-bounded L2 regression loss added to the detector's smooth L1.
        NU = 0.5
        # m: the bounded loss is on while ||R_s - y||^2 + m > ||R_t - y||^2.
        MARGIN = 0.0
        # gamma: weight of the hint loss ||A(V) - Z||^2 (mean over elements and levels); 0 = off.
        HINT_WEIGHT = 0.5
        # FPN levels that get a hint loss (each through its own adaptation conv A).
        HINT_FEATURES = ["p2", "p3", "p4", "p5"]
        # Kernel size of the hint adaptation convs A.
        ADAPTER_KERNEL_SIZE = 1
        # Distil the box head (soft class scores + bounded regression on foreground RoIs).
        BOX_HEAD = True
        # Distil the RPN (2-class soft objectness + bounded regression on its sampled positive anchors).
        RPN = True

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        c = cfg.MODEL.DISTILL.CHEN2017
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
        self.rpn_batch_size_per_image = cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE
        hint_features = list(c.HINT_FEATURES) if self.hint_weight != 0 else []
        self.adapters = level_adapters(
            cfg, "MODEL.DISTILL.CHEN2017.HINT_FEATURES", hint_features, student_shapes, teacher_shapes,
            kernel_size=c.ADAPTER_KERNEL_SIZE, always=True,
        )
        needs = set()
        if hint_features:
            needs.add("features")
        if self.box_head:
            needs.add("roi")
        if self.rpn:
            needs.add("rpn")
        self.teacher_needs = frozenset(needs)
        self.reads_teacher_box_deltas = self.box_head

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

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        losses = {}
        if self.box_head:
            losses.update(self._box_head_losses(ctx))
        if self.rpn:
            losses.update(self._rpn_losses(ctx))
        if len(self.adapters):
            losses["loss_chen2017_hint"] = self.hint_weight * self._hint_loss(ctx)
        return losses

    def _box_head_losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        scores_s, deltas_s = ctx.student.roi.scores, ctx.student.roi.deltas
        scores_t, deltas_t = ctx.teacher.roi.scores, ctx.teacher.roi.deltas
        soft = weighted_soft_cross_entropy(
            scores_s, scores_t, self._class_weights(scores_s.shape[1], scores_s), self.temperature
        )
        soft = soft.mean() if len(soft) else scores_s.sum() * 0.0
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
        student, teacher = ctx.student.rpn, ctx.teacher.rpn
        logits_s, deltas_s = flatten_rpn_outputs(student.objectness_logits, student.anchor_deltas)
        logits_t, deltas_t = flatten_rpn_outputs(teacher.objectness_logits, teacher.anchor_deltas)
        anchors = Boxes.cat(student.anchors)
        labels = torch.stack(student.gt_labels)  # (N, A): the RPN's sampled mini-batch
        matched = torch.stack(student.gt_boxes)  # (N, A, 4)
        normalizer = self.rpn_batch_size_per_image * len(labels)
        sampled = labels >= 0
        # 2-class distribution per anchor: [foreground, background] with background last.
        two_class_s = torch.stack([logits_s[sampled], torch.zeros_like(logits_s[sampled])], dim=1)
        two_class_t = torch.stack([logits_t[sampled], torch.zeros_like(logits_t[sampled])], dim=1)
        soft = weighted_soft_cross_entropy(
            two_class_s, two_class_t, self._class_weights(2, logits_s), self.temperature
        ).sum() / normalizer
        pos = labels == 1
        targets = self.rpn_box2box_transform.get_deltas(
            anchors.tensor.expand(len(labels), -1, -1)[pos], matched[pos]
        )
        bounded = teacher_bounded_l2(deltas_s[pos], deltas_t[pos], targets, self.margin).sum() / normalizer
        ctx.stats["distill/chen2017_rpn_soft_ce"] = soft.detach()
        ctx.stats["distill/chen2017_rpn_bounded"] = bounded.detach()
        return {
            "loss_chen2017_rpn_cls": (1.0 - self.mu) * soft,
            "loss_chen2017_rpn_reg": self.nu * bounded,
        }

    def _hint_loss(self, ctx: DistillContext) -> torch.Tensor:
        per_level = [
            mse(adapter(ctx.student.features[f]), ctx.teacher.features[f], f"Chen2017Distill hint {f}")
            for f, adapter in self.adapters.items()
        ]
        hint = torch.stack(per_level).mean()
        ctx.stats["distill/chen2017_hint_mse"] = hint.detach()
        return hint

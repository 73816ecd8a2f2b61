"""Global-knowledge distillation: Tang et al. 2022, "Distilling Object Detectors with Global
Knowledge" (ECCV): the robust distillation, the second module of the paper (the first,
prototype generation, is :mod:`hkd_d2.modeling.distill.gkd_prototypes`).

The instances are the student's positive sampled RoIs; each is put on ONE FPN level by the
canonical-size rule (Detectron2's ``assign_boxes_to_levels``, ``CANONICAL_BOX_SIZE`` on
``CANONICAL_LEVEL``) and pooled there into a student and a teacher vector (the mean of the map
inside the box). Each gets a robust weight
``r_i = clamp(1 - |max_k cos(s_i, P_s^k) - max_k cos(t_i, P_t^k)|, 0, 1)`` against the prototypes
of its class and level (:func:`robust_weights`): instances the two models place differently
w.r.t. the prototypes are noisy knowledge and imitated less. Losses, with
``e = mean_c (A(s) - t)^2`` per location (``A`` an adaptation conv per level):

* ``loss_gkd_fg`` = ``FG_WEIGHT`` x mean over levels of ``sum(e * m) / max(1, 2 sum m)``, ``m``
  the location's largest robust weight among the RoIs of that level covering it;
* ``loss_gkd_bg`` = ``BG_WEIGHT`` x mean over levels of ``sum(e * b) / max(1, 2 sum b)``, ``b``
  the locations with ``m = 0`` outside every ignore box;
* ``loss_gkd_kd`` = ``KD_WEIGHT`` x mean over positive RoIs of ``r_i T^2 mean_c KL_c``, the KL
  between teacher and student class scores at temperature ``T``, averaged over classes.

The distiller multiplies all by ``WEIGHT``; with ``ATTENUATE`` the two feature losses (not the KL) decay
linearly to 0 at SOLVER.MAX_ITER (the term's schedule).

Reference: the authors' code (DAVAR-Lab-ML ``third_party/kd``: ``kd_loss.py`` and the Faster
R-CNN config's ``kd_param``). Matches: per-element normalisation, the r-weighted foreground mean,
the background over the other locations, the mean over levels, fg 1 / bg 4, the KL on positive
RoIs weighted by r and averaged over classes and not attenuated, one level per box. Differs on
purpose: the instance vector is RoIAlign's average over the box (``ROIAlign`` with a 1x1 output
and adaptive sampling), not a crop + average pool; prototypes come from ground-truth boxes of a
fixed, seeded sample of ``PROTOTYPE_IMAGES`` training images rather than confident teacher
detections; an instance of a class/level without prototypes (or before the first rebuild) gets
``r = 1``; locations inside ignore boxes are no background; the adapter is a 1x1 conv without
ReLU (``ADAPTER_KERNEL_SIZE``; FPN maps are signed).
"""
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.layers import ROIAlign, cat
from detectron2.modeling.poolers import assign_boxes_to_levels, convert_boxes_to_pooler_format
from detectron2.structures import Boxes, Instances

from ..ignore import split_ignored
from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes
from .common import level_adapters
from .gkd_prototypes import PrototypeHook, Prototypes

__all__ = ["GKDDistill", "robust_weights", "box_location_masks", "soft_label_kl"]

FEATURE_LOSSES = ("loss_gkd_fg", "loss_gkd_bg")


def robust_weights(
    student: torch.Tensor,
    teacher: torch.Tensor,
    prototypes_s: torch.Tensor,
    prototypes_t: torch.Tensor,
) -> torch.Tensor:
    """``r = clamp(1 - |max_k cos(s, P_s^k) - max_k cos(t, P_t^k)|, 0, 1)``.

    Args:
        student, teacher: (M, C_s), (M, C_t) instance vectors.
        prototypes_s, prototypes_t: (K, C_s), (K, C_t).
    Returns:
        (M,) weights; all ones when K == 0.
    """
    if len(prototypes_s) == 0:
        return student.new_ones(student.shape[0])
    sim_s = (F.normalize(student, dim=1) @ F.normalize(prototypes_s, dim=1).T).max(dim=1).values
    sim_t = (F.normalize(teacher, dim=1) @ F.normalize(prototypes_t, dim=1).T).max(dim=1).values
    return (1.0 - (sim_s - sim_t).abs()).clamp(0.0, 1.0)


def box_location_masks(boxes: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """(M, 4) XYXY boxes (image pixels) -> (M, H, W) bool: location centres inside each box."""
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside_y = (ys.view(1, -1, 1) >= y1) & (ys.view(1, -1, 1) < y2)
    inside_x = (xs.view(1, 1, -1) >= x1) & (xs.view(1, 1, -1) < x2)
    return inside_y & inside_x


def soft_label_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, weights: torch.Tensor
) -> torch.Tensor:
    """``mean_r w_r T^2 mean_c KL_c(softmax(z_t/T) || softmax(z_s/T))`` over the R rows of (R, C)
    logits, ``weights`` (R,); 0 (in the graph) when R == 0."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="none",
    ).mean(dim=1)
    return (kl * weights).mean() * temperature ** 2


def _weighted_mean(err: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(err * w) / max(1, 2 sum w)`` (the reference's normalisation)."""
    return (err * weights).sum() / (2.0 * weights.sum()).clamp(min=1.0)


@DISTILL_TERM_REGISTRY.register()
class GKDDistill(DistillTerm):
    """Prototype-weighted feature imitation + RoI soft-label KL (see the module docstring).

    Losses ``loss_gkd_fg``, ``loss_gkd_bg``, ``loss_gkd_kd``. :class:`PrototypeHook` calls
    :meth:`set_prototypes`, reading instance vectors through :meth:`assigned_vectors`.
    """

    CONFIG_NODE = "MODEL.DISTILL.GKD"
    teacher_needs = frozenset({"features", "roi"})
    hooks = (PrototypeHook,)

    class Defaults:
        # Multiplier of every GKDDistill loss.
        WEIGHT = 1.0
        # FPN levels with prototypes and feature imitation (consecutive levels, finest first).
        IN_FEATURES = ["p2", "p3", "p4", "p5"]
        # Weight of the robust-weighted feature imitation on positive RoIs (reference: 1).
        FG_WEIGHT = 1.0
        # Weight of the feature imitation on the other locations, ignore boxes excluded (reference: 4).
        BG_WEIGHT = 4.0
        # Weight of the robust-weighted KL divergence between teacher and student RoI class scores.
        KD_WEIGHT = 1.0
        # Softmax temperature of that KL divergence (scaled by T^2).
        TEMPERATURE = 2.0
        # Canonical-size rule putting each box on one level: a box of this sqrt(area) (pixels) ...
        CANONICAL_BOX_SIZE = 224
        # ... goes to this level (P4), each factor 2 in size one level up or down.
        CANONICAL_LEVEL = 4
        # Kernel size of the adaptation convs (1x1, no ReLU: FPN maps are signed).
        ADAPTER_KERNEL_SIZE = 1
        # K: prototypes selected per class and level.
        NUM_PROTOTYPES = 10
        # alpha: coupling of teacher and student coefficients in joint matching pursuit.
        ALPHA = 10.0
        # Ground-truth boxes narrower or lower than this (pixels, original image) give no prototype instance.
        MIN_BOX_SIZE = 30.0
        # Bandwidth of the Gaussian kernel on cosine distance in the density filter.
        DENSITY_BANDWIDTH = 0.1
        # Instances below this quantile of density (teacher or student space) are no candidates.
        DENSITY_QUANTILE = 0.4
        # Training images read per prototype rebuild (sampled with a fixed seed; 0 = all).
        PROTOTYPE_IMAGES = 500
        # Iterations between prototype rebuilds (0 = once per epoch of the training set).
        PROTOTYPE_PERIOD = 0
        # Attenuate the two feature losses linearly from 1 at iteration 0 to 0 at SOLVER.MAX_ITER.
        ATTENUATE = True

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        c = cfg.MODEL.DISTILL.GKD
        super().__init__(cfg, attenuated=FEATURE_LOSSES if c.ATTENUATE else ())
        self.in_features = list(c.IN_FEATURES)
        self.adapters = level_adapters(
            cfg, "MODEL.DISTILL.GKD.IN_FEATURES", self.in_features, student_shapes, teacher_shapes,
            kernel_size=c.ADAPTER_KERNEL_SIZE, always=True,
        )
        self.strides = {f: student_shapes[f].stride for f in self.in_features}
        levels = [int(math.log2(self.strides[f])) for f in self.in_features]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(
                f"MODEL.DISTILL.GKD.IN_FEATURES {self.in_features}: need consecutive FPN levels, finest first"
            )
        self.min_level, self.max_level = levels[0], levels[-1]
        self.canonical_box_size = c.CANONICAL_BOX_SIZE
        self.canonical_level = c.CANONICAL_LEVEL
        self.num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        self.fg_weight = c.FG_WEIGHT
        self.bg_weight = c.BG_WEIGHT
        self.kd_weight = c.KD_WEIGHT
        self.temperature = c.TEMPERATURE
        self.box_averages = nn.ModuleDict(
            {
                f: ROIAlign((1, 1), 1.0 / self.strides[f], sampling_ratio=0, aligned=True)
                for f in self.in_features
            }
        )
        self.prototypes: Prototypes = {}

    def set_prototypes(self, prototypes: Prototypes) -> None:
        """Replace all prototypes: ``(class, level) -> (P_s (K, C_s), P_t (K, C_t))``."""
        self.prototypes = dict(prototypes)

    def assign_levels(self, boxes: List[Boxes]) -> torch.Tensor:
        """(M,) index into ``in_features`` of each box (M over the batch), by the canonical-size rule."""
        return assign_boxes_to_levels(
            boxes, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )

    def assigned_vectors(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Each box pooled on its own level: level -> (indices (M_l,) into the M boxes of the
        batch, mean of the level's map inside each of those boxes (M_l, C))."""
        rois = convert_boxes_to_pooler_format(boxes)
        levels = self.assign_levels(boxes)
        out = {}
        for i, f in enumerate(self.in_features):
            idx = (levels == i).nonzero().squeeze(1)
            out[f] = (idx, self.box_averages[f](features[f], rois[idx]).flatten(1))
        return out

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        boxes, classes, positive = self._positive_rois(ctx.proposals)
        student_maps, teacher_maps = ctx.student.features, ctx.teacher.features
        image_of = torch.repeat_interleave(
            torch.arange(len(boxes), device=classes.device), torch.tensor([len(b) for b in boxes], device=classes.device)
        )
        all_boxes = cat([b.tensor for b in boxes])
        ignore_boxes = [split_ignored(x)[1].tensor for x in ctx.gt_instances]
        with torch.no_grad():
            vec_s = self.assigned_vectors(student_maps, boxes)
            vec_t = self.assigned_vectors(teacher_maps, boxes)
        weights = all_boxes.new_ones(len(all_boxes))
        fg_levels, bg_levels = [], []
        for f in self.in_features:
            idx, s = vec_s[f]
            weights[idx] = self._robust_weights(f, s, vec_t[f][1], classes[idx])
            student, teacher = self.adapters[f](student_maps[f]), teacher_maps[f]
            fg_map = self._foreground_map(all_boxes[idx], image_of[idx], weights[idx], teacher.shape, self.strides[f])
            bg = (fg_map == 0) & ~self._ignore_mask(ignore_boxes, teacher.shape, self.strides[f])
            err = (student - teacher).pow(2).mean(dim=1)
            fg_levels.append(_weighted_mean(err, fg_map))
            bg_levels.append(_weighted_mean(err, bg.to(err.dtype)))
            if len(idx):
                ctx.stats[f"distill/gkd_robust_weight_{f}"] = weights[idx].mean()
        fg, bg = torch.stack(fg_levels).mean(), torch.stack(bg_levels).mean()
        kd = soft_label_kl(
            ctx.student.roi.scores[positive], ctx.teacher.roi.scores[positive], self.temperature, weights
        )
        ctx.stats.update(
            {"distill/gkd_fg": fg.detach(), "distill/gkd_bg": bg.detach(), "distill/gkd_kd": kd.detach()}
        )
        return {
            "loss_gkd_fg": self.fg_weight * fg,
            "loss_gkd_bg": self.bg_weight * bg,
            "loss_gkd_kd": self.kd_weight * kd,
        }

    def _positive_rois(self, proposals: List[Instances]) -> Tuple[List[Boxes], torch.Tensor, torch.Tensor]:
        """Per image the boxes of the positive sampled RoIs, their (M,) classes and the (R,) bool
        mask of the positives among all R sampled RoIs."""
        gt_classes = cat([p.gt_classes for p in proposals])
        positive = (gt_classes >= 0) & (gt_classes < self.num_classes)
        boxes = [p.proposal_boxes[(p.gt_classes >= 0) & (p.gt_classes < self.num_classes)] for p in proposals]
        return boxes, gt_classes[positive], positive

    def _robust_weights(
        self, level: str, vec_s: torch.Tensor, vec_t: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """(M,) robust weight of each instance at ``level``; 1 where its class has no prototypes."""
        weights = vec_s.new_ones(len(classes))
        for c in classes.unique().tolist():
            if (c, level) in self.prototypes:
                p_s, p_t = self.prototypes[(c, level)]
                sel = classes == c
                weights[sel] = robust_weights(vec_s[sel], vec_t[sel], p_s.to(vec_s), p_t.to(vec_t))
        return weights

    @staticmethod
    def _foreground_map(
        boxes: torch.Tensor, image_of: torch.Tensor, weights: torch.Tensor, shape: torch.Size, stride: int
    ) -> torch.Tensor:
        """(N, H, W) largest robust weight of the boxes (M_l, 4) covering each location of a
        level of ``shape`` (N, C, H, W); ``image_of`` (M_l,) is each box's image."""
        num_images, _, height, width = shape
        inside = box_location_masks(boxes, height, width, stride).to(weights.dtype) * weights.view(-1, 1, 1)
        fg_map = weights.new_zeros(num_images, height, width)
        for n in image_of.unique().tolist():
            fg_map[n] = inside[image_of == n].amax(dim=0)
        return fg_map

    @staticmethod
    def _ignore_mask(ignore_boxes: List[torch.Tensor], shape: torch.Size, stride: int) -> torch.Tensor:
        """(N, H, W) bool: location centres inside an ignore box of their image."""
        height, width = shape[-2:]
        return torch.stack([box_location_masks(b, height, width, stride).any(dim=0) for b in ignore_boxes])

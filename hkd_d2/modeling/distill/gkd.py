"""Global-knowledge distillation: Tang et al. 2022, "Distilling Object Detectors with Global
Knowledge" (ECCV).

Two modules of the paper:

* **Prototype generation** (run by :class:`hkd_d2.engine.prototype_hook.PrototypeHook`, once
  before training and then every epoch). For each class and FPN level, every ground-truth
  instance of at least ``MIN_BOX_SIZE`` px (width and height) gives a teacher and a student
  vector: the mean of the level's map inside the box (:func:`instance_vectors`). Vectors are
  L2-normalised; a density filter keeps instances whose Gaussian-kernel density
  ``sum_j exp(-((1 - cos_ij) / h)^2)`` is at least the ``DENSITY_QUANTILE`` quantile in BOTH
  spaces (:func:`density_candidates`); joint matching pursuit (:func:`joint_matching_pursuit`)
  then picks ``NUM_PROTOTYPES`` instances whose teacher and student vectors jointly explain all
  instances, with coefficients of the two spaces tied by ``ALPHA``.
* **Robust distillation.** Each ground-truth instance gets a weight
  ``r_i = 1 - |max_k cos(s_i, P_s^k) - max_k cos(t_i, P_t^k)|`` (clamped to [0, 1];
  :func:`robust_weights`): instances the two models place differently w.r.t. the prototypes
  are noisy knowledge and imitated less. Losses: feature imitation inside gt boxes weighted by
  ``r`` (``loss_gkd_fg``), imitation outside all boxes (``loss_gkd_bg``), each
  ``sum w * ||A(s) - t||^2 / (2 * locations)`` through a 1x1 conv ``A`` per level, and the
  KL divergence between teacher and student RoI class scores at temperature ``T``
  (``loss_gkd_kd``, times ``T^2``). All are multiplied by ``WEIGHT`` and by the attenuation
  factor that the hook lowers linearly from 1 to 0 over training (``ATTENUATE``).

Simplifications (honest list): the instance vector is RoIAlign's average over the box
(Detectron2's ``ROIAlign`` with a 1x1 output and adaptive sampling), not the paper's crop +
average pool; prototypes come from ground-truth boxes of a fixed, seeded sample of
``PROTOTYPE_IMAGES`` training images rather than confident teacher detections; an instance of a
class/level without prototypes (or before the first rebuild) gets ``r = 1``; the paper's
projection of features on the prototypes (its "global knowledge" coefficients) enters only
through the robust weights; the fg/bg split uses feature-location centres inside gt boxes;
background excludes ignore boxes; default loss weights are ours, not tuned.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from detectron2.structures import Boxes, Instances

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm
from .chen2017 import non_ignored_boxes

__all__ = [
    "GKDDistill",
    "density_candidates",
    "joint_matching_pursuit",
    "select_prototypes",
    "robust_weights",
    "box_location_masks",
    "soft_label_kl",
]

# (class id, level name) -> (student prototypes (K, C_s), teacher prototypes (K, C_t)).
Prototypes = Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]]


def density_candidates(
    student: torch.Tensor, teacher: torch.Tensor, bandwidth: float = 0.1, quantile: float = 0.4
) -> torch.Tensor:
    """Indices of instances dense enough in both spaces.

    Args:
        student, teacher: (M, C_s), (M, C_t) L2-normalised instance vectors.
    Returns:
        LongTensor of indices whose density is >= the ``quantile`` of densities in both spaces
        (never empty for M >= 1).
    """
    keep = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
    for x in (student, teacher):
        density = torch.exp(-((1.0 - x @ x.T) / bandwidth).pow(2)).sum(dim=1)
        bound = density.sort().values[int(quantile * (len(density) - 1))]
        keep &= density >= bound
    return keep.nonzero().squeeze(1)


def joint_matching_pursuit(
    student: torch.Tensor,
    teacher: torch.Tensor,
    candidates: torch.Tensor,
    num: int,
    alpha: float = 10.0,
) -> torch.Tensor:
    """Greedy joint matching pursuit over the two spaces.

    At each step the candidate atom ``k`` (unit vectors ``a_k``, ``b_k``) minimising
    ``sum_n ||ra_n - wa_n a_k||^2 + ||rb_n - wb_n b_k||^2 + alpha (wa_n - wb_n)^2`` (optimal
    ``wa, wb`` in closed form) is chosen and removed from the residuals ``ra, rb``.

    Args:
        student, teacher: (M, C_s), (M, C_t) L2-normalised instance vectors.
        candidates: LongTensor of candidate indices.
        num: atoms to select (at most ``len(candidates)``).
    Returns:
        LongTensor (min(num, len(candidates)),) of selected instance indices, in order.
    """
    atoms_s, atoms_t = student[candidates], teacher[candidates]
    res_s, res_t = student.clone(), teacher.clone()
    taken = torch.zeros(len(candidates), dtype=torch.bool, device=student.device)
    chosen = []
    for _ in range(min(num, len(candidates))):
        inner_s, inner_t = res_s @ atoms_s.T, res_t @ atoms_t.T  # (M, K)
        shared = alpha * (inner_s + inner_t)
        w_s = (inner_s + shared) / (1 + 2 * alpha)
        w_t = (inner_t + shared) / (1 + 2 * alpha)
        # Residual energy after removing each atom, up to a constant (||a_k|| = ||b_k|| = 1).
        err = (w_s.pow(2) - 2 * w_s * inner_s + w_t.pow(2) - 2 * w_t * inner_t
               + alpha * (w_s - w_t).pow(2)).sum(dim=0)
        err[taken] = float("inf")
        k = int(err.argmin())
        taken[k] = True
        chosen.append(int(candidates[k]))
        res_s = res_s - w_s[:, k : k + 1] * atoms_s[k]
        res_t = res_t - w_t[:, k : k + 1] * atoms_t[k]
    return torch.tensor(chosen, dtype=torch.long, device=student.device)


def select_prototypes(
    student: torch.Tensor,
    teacher: torch.Tensor,
    num: int = 10,
    alpha: float = 10.0,
    bandwidth: float = 0.1,
    quantile: float = 0.4,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prototypes of one class and level from its instance vectors (M, C_s) and (M, C_t).

    Returns the selected rows of the (unnormalised) inputs, (K, C_s) and (K, C_t).
    """
    norm_s, norm_t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    candidates = density_candidates(norm_s, norm_t, bandwidth, quantile)
    chosen = joint_matching_pursuit(norm_s, norm_t, candidates, num, alpha)
    return student[chosen], teacher[chosen]


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
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` averaged over the R rows of (R, C) logits."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    ) * temperature ** 2


@DISTILL_TERM_REGISTRY.register()
class GKDDistill(DistillTerm):
    """Prototype-weighted feature imitation + RoI soft-label KL (see the module docstring).

    Losses ``loss_gkd_fg``, ``loss_gkd_bg``, ``loss_gkd_kd``. The prototype hook calls
    :meth:`set_prototypes` and :meth:`set_attenuation`; it reads instance vectors through
    :meth:`instance_vectors`.
    """

    WEIGHT_KEY = "MODEL.DISTILL.GKD.WEIGHT"

    teacher_needs = frozenset({"features", "roi"})

    def __init__(
        self,
        cfg: CfgNode,
        student_shapes: Dict[str, ShapeSpec],
        teacher_shapes: Dict[str, ShapeSpec],
    ):
        c = cfg.MODEL.DISTILL.GKD
        super().__init__(c.WEIGHT)
        self.in_features = list(c.IN_FEATURES)
        for f in self.in_features:
            if f not in student_shapes or f not in teacher_shapes:
                raise ValueError(
                    f"MODEL.DISTILL.GKD.IN_FEATURES: '{f}' is not an output of both backbones "
                    f"(student {sorted(student_shapes)}, teacher {sorted(teacher_shapes)})"
                )
            if student_shapes[f].stride != teacher_shapes[f].stride:
                raise ValueError(f"GKD level '{f}': student and teacher strides differ")
        self.fg_weight = c.FG_WEIGHT
        self.bg_weight = c.BG_WEIGHT
        self.kd_weight = c.KD_WEIGHT
        self.temperature = c.TEMPERATURE
        self.strides = {f: student_shapes[f].stride for f in self.in_features}
        self.adapters = nn.ModuleDict(
            {
                f: nn.Conv2d(student_shapes[f].channels, teacher_shapes[f].channels, kernel_size=1)
                for f in self.in_features
            }
        )
        self.box_averages = nn.ModuleDict(
            {
                f: ROIAlign((1, 1), 1.0 / self.strides[f], sampling_ratio=0, aligned=True)
                for f in self.in_features
            }
        )
        self.prototypes: Prototypes = {}
        self.attenuation = 1.0

    def set_prototypes(self, prototypes: Prototypes) -> None:
        """Replace all prototypes: ``(class, level) -> (P_s (K, C_s), P_t (K, C_t))``."""
        self.prototypes = dict(prototypes)

    def set_attenuation(self, factor: float) -> None:
        """Multiplier of every GKD loss, in [0, 1]."""
        self.attenuation = float(factor)

    def instance_vectors(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> Dict[str, torch.Tensor]:
        """Mean of each level's map inside each box: level -> (M, C), M boxes over the batch."""
        rois = convert_boxes_to_pooler_format(boxes)
        return {f: self.box_averages[f](features[f], rois).flatten(1) for f in self.in_features}

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        gt_boxes = [non_ignored_boxes(x) for x in ctx.gt_instances]
        gt_classes = torch.cat([self._non_ignored_classes(x) for x in ctx.gt_instances])
        fg_total, bg_total, fg_count, bg_count = 0.0, 0.0, 0, 0
        with torch.no_grad():
            vec_s = self.instance_vectors(ctx.student_features, gt_boxes)
            vec_t = self.instance_vectors(ctx.teacher_features, gt_boxes)
        for f in self.in_features:
            weights = self._robust_weights(f, vec_s[f], vec_t[f], gt_classes)
            student, teacher = self.adapters[f](ctx.student_features[f]), ctx.teacher_features[f]
            fg_map, fg_mask, bg_mask = self._location_weights(
                ctx.gt_instances, gt_boxes, weights, teacher.shape[-2:], self.strides[f]
            )
            err = (student - teacher).pow(2).sum(dim=1)
            fg_total = fg_total + (err * fg_map).sum()
            bg_total = bg_total + (err * bg_mask).sum()
            fg_count += int(fg_mask.sum())
            bg_count += int(bg_mask.sum())
            if len(weights):
                ctx.stats[f"distill/gkd_robust_weight_{f}"] = weights.mean()
        fg = fg_total / (2.0 * max(fg_count, 1))
        bg = bg_total / (2.0 * max(bg_count, 1))
        kd = soft_label_kl(ctx.student_predictions[0], ctx.teacher_predictions[0], self.temperature)
        ctx.stats.update(
            {"distill/gkd_fg": fg.detach(), "distill/gkd_bg": bg.detach(),
             "distill/gkd_kd": kd.detach()}
        )
        scale = self.weight * self.attenuation
        return {
            "loss_gkd_fg": scale * self.fg_weight * fg,
            "loss_gkd_bg": scale * self.bg_weight * bg,
            "loss_gkd_kd": scale * self.kd_weight * kd,
        }

    @staticmethod
    def _non_ignored_classes(instances: Instances) -> torch.Tensor:
        if instances.has("gt_ignore"):
            return instances.gt_classes[~instances.gt_ignore]
        return instances.gt_classes

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
    def _location_weights(
        gt_instances: List[Instances],
        gt_boxes: List[Boxes],
        weights: torch.Tensor,
        size: Tuple[int, int],
        stride: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a level of ``size`` (H, W), each (N, H, W): the foreground weight map (largest
        robust weight of the gt boxes covering a location), the foreground mask (inside a gt
        box) and the background mask (outside every gt and ignore box)."""
        height, width = size
        fg_maps, fg_masks, bg_masks = [], [], []
        for instances, boxes, w in zip(gt_instances, gt_boxes, weights.split([len(b) for b in gt_boxes])):
            inside = box_location_masks(boxes.tensor, height, width, stride)  # (M_n, H, W)
            weighted = torch.where(inside, w.view(-1, 1, 1), torch.zeros_like(w).view(-1, 1, 1))
            fg_maps.append(torch.cat([weighted, weighted.new_zeros(1, height, width)]).amax(dim=0))
            fg_masks.append(inside.any(dim=0))
            covered = box_location_masks(instances.gt_boxes.tensor, height, width, stride)
            bg_masks.append(~covered.any(dim=0))
        return torch.stack(fg_maps), torch.stack(fg_masks), torch.stack(bg_masks)

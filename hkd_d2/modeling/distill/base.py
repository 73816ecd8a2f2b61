"""The shared mechanism of every distillation method: a registry of *terms*.

A term is a small ``nn.Module`` built from the config. At each training step the
distillation meta-architecture fills one :class:`DistillContext` with the student's
(and, when some term asks for it, the teacher's) intermediate tensors, calls every term
on it and adds the returned, already weighted losses to the loss dict.

A term declares which teacher outputs it reads in ``teacher_needs`` so that the
meta-architecture runs only the teacher work some term needs (none at all when no term
needs the teacher).
"""
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from torch import nn
from detectron2.config import CfgNode
from detectron2.structures import ImageList, Instances
from detectron2.utils.registry import Registry

__all__ = [
    "DISTILL_TERM_REGISTRY",
    "TEACHER_OUTPUTS",
    "DistillContext",
    "DistillTerm",
    "build_distill_terms",
]

DISTILL_TERM_REGISTRY = Registry("DISTILL_TERM")
DISTILL_TERM_REGISTRY.__doc__ = """
Distillation terms. Each is called as ``Term(cfg, student_shapes, teacher_shapes)`` where the
shapes are ``Dict[str, ShapeSpec]`` of the two backbones' outputs, and returns an nn.Module
whose ``forward(ctx: DistillContext) -> Dict[str, Tensor]`` gives weighted losses.
"""

# What a term may ask of the teacher: backbone maps, RPN outputs on the student's anchors,
# pooled RoI features / box-head predictions on the student's sampled RoIs.
TEACHER_OUTPUTS = frozenset({"features", "rpn", "roi"})


@dataclass
class DistillContext:
    """Tensors of one training step, shared by all distillation terms.

    Shapes: N images, R sampled RoIs over the batch, K classes, S pooler resolution.
    ``teacher_*`` fields are ``None`` unless some term listed them in ``teacher_needs``.
    """

    images: ImageList
    gt_instances: List[Instances]
    # Backbone outputs, e.g. {"p2": (N, C, H/4, W/4), ...}.
    student_features: Dict[str, torch.Tensor]
    # Sampled RoIs shared by student and teacher (proposal_boxes, gt_classes, gt_boxes, ...).
    proposals: List[Instances]
    # Pooled RoI features (R, C, S, S) and box-head predictions: scores (R, K+1), deltas (R, 4K).
    student_roi_features: torch.Tensor
    student_predictions: Tuple[torch.Tensor, torch.Tensor]
    teacher_features: Optional[Dict[str, torch.Tensor]] = None
    teacher_roi_features: Optional[torch.Tensor] = None
    teacher_predictions: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    # RPN head outputs (only when some term needs "rpn"): {"objectness_logits": per level
    # (N, A, Hl, Wl), "anchor_deltas": per level (N, A*4, Hl, Wl), "anchors": per level Boxes
    # (Hl*Wl*A, 4)}; the teacher's are computed on the student's anchors (same "anchors" list).
    student_rpn: Optional[Dict[str, list]] = None
    teacher_rpn: Optional[Dict[str, list]] = None
    # Weight multiplier set by the schedule (warm-up), in [0, 1]; informative only: the
    # meta-architecture multiplies the returned losses by it, terms must not apply it again.
    scale: float = 1.0
    # Unweighted per-term statistics a term wants logged (e.g. raw MSE), filled by the terms:
    # floats or detached 0-dim tensors, named like "distill/pd"; written to the EventStorage.
    stats: Dict[str, Union[float, torch.Tensor]] = field(default_factory=dict)


class DistillTerm(nn.Module):
    """Base class: subclasses set ``teacher_needs`` and implement ``forward``."""

    teacher_needs: FrozenSet[str] = frozenset()

    def __init__(self, weight: float):
        super().__init__()
        self.weight = float(weight)

    @property
    def detector_loss_scales(self) -> Dict[str, float]:
        """Factors for the student's own detection losses that this term replaces in part
        (e.g. Chen et al.'s ``mu`` on ``loss_cls``); empty for most terms."""
        return {}

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def build_distill_terms(cfg: CfgNode, student_shapes, teacher_shapes) -> nn.ModuleList:
    """Build the terms listed in ``cfg.MODEL.DISTILL.TERMS``, leaving out those of weight 0."""
    terms = nn.ModuleList()
    for name in cfg.MODEL.DISTILL.TERMS:
        term = DISTILL_TERM_REGISTRY.get(name)(cfg, student_shapes, teacher_shapes)
        unknown = set(term.teacher_needs) - TEACHER_OUTPUTS
        if unknown:
            raise ValueError(f"Distillation term {name} asks for unknown teacher outputs {unknown}")
        if term.weight != 0:
            terms.append(term)
    return terms

"""Ignore regions in training targets, shared by the RPN and the box head.

Targets may carry ``gt_ignore`` (bool, one per box): such boxes (crowds, "people" groups,
CityPersons ignore regions) are never matched and never positives, and an anchor or
proposal that would be background but lies mostly inside one (intersection over its own
area >= ``MODEL.IGNORE_REGIONS.IOA_THRESHOLD``) is left out of sampling.
"""
from typing import Dict, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances, pairwise_ioa

__all__ = ["IgnoreRegionsMixin", "split_ignored", "covered_by_ignore"]


class IgnoreRegionsMixin:
    """The ignore-region set-up shared by :class:`~hkd_d2.modeling.rpn.PedestrianRPN` and
    :class:`~hkd_d2.modeling.roi_heads.PedestrianROIHeads`: put it before the Detectron2 class
    (``class X(IgnoreRegionsMixin, RPN)``); ``ignore_regions`` and ``ignore_ioa_threshold`` come
    from ``MODEL.IGNORE_REGIONS``."""

    @configurable
    def __init__(self, *, ignore_regions: bool = True, ignore_ioa_threshold: float = 0.5, **kwargs):
        """
        Args:
            ignore_regions: leave background anchors/proposals inside ignore boxes out of sampling.
            ignore_ioa_threshold: covered fraction of an anchor's/proposal's area that makes it ignored.
            kwargs: arguments of the Detectron2 class.
        """
        super().__init__(**kwargs)
        self.ignore_regions = ignore_regions
        self.ignore_ioa_threshold = ignore_ioa_threshold

    @classmethod
    def from_config(cls, cfg, input_shape) -> Dict:
        ret = super().from_config(cfg, input_shape)
        threshold = cfg.MODEL.IGNORE_REGIONS.IOA_THRESHOLD
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"MODEL.IGNORE_REGIONS.IOA_THRESHOLD must be in (0, 1], got {threshold}")
        ret.update(ignore_regions=cfg.MODEL.IGNORE_REGIONS.ENABLED, ignore_ioa_threshold=threshold)
        return ret


def split_ignored(targets: Instances) -> Tuple[Instances, Boxes]:
    """Split one image's targets into the boxes to learn from and the ignore boxes.

    Args:
        targets: M instances with ``gt_boxes``, optionally ``gt_ignore`` (bool, (M,)).

    Returns:
        Instances: the non-ignored instances, without the ``gt_ignore`` field (``targets``
            itself when it has no such field).
        Boxes: the G ignore boxes (empty when there are none).
    """
    if not targets.has("gt_ignore"):
        return targets, Boxes(targets.gt_boxes.tensor[:0])
    ignore = targets.gt_ignore
    kept = targets[~ignore]
    kept.remove("gt_ignore")
    return kept, targets.gt_boxes[ignore]


def covered_by_ignore(boxes: Boxes, ignore_boxes: Boxes, threshold: float) -> torch.Tensor:
    """Which boxes lie inside an ignore box.

    Args:
        boxes: N boxes (anchors or proposals).
        ignore_boxes: G ignore boxes.
        threshold: minimum intersection with one ignore box over the box's own area, in (0, 1].

    Returns:
        BoolTensor (N,): True where some ignore box covers at least ``threshold`` of the box.
    """
    if len(ignore_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    # pairwise_ioa(a, b) divides by the area of b: (G, N) fractions of each box covered.
    return pairwise_ioa(ignore_boxes, boxes).max(dim=0).values >= threshold

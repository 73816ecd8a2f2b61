"""Ignore regions in training targets, shared by the RPN and the box head.

Targets may carry ``gt_ignore`` (bool, one per box): such boxes (crowds, "people" groups,
CityPersons ignore regions) are never matched and never positives, and an anchor or
proposal that would be background but lies mostly inside one (intersection over its own
area >= ``MODEL.IGNORE_REGIONS.IOA_THRESHOLD``) is left out of sampling.
"""
from typing import Dict, Tuple

import torch
from detectron2.structures import Boxes, Instances, pairwise_ioa

__all__ = ["ignore_regions_config", "split_ignored", "covered_by_ignore"]


def ignore_regions_config(cfg) -> Dict:
    """Constructor arguments of the ignore-aware heads, from ``MODEL.IGNORE_REGIONS``."""
    threshold = cfg.MODEL.IGNORE_REGIONS.IOA_THRESHOLD
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"MODEL.IGNORE_REGIONS.IOA_THRESHOLD must be in (0, 1], got {threshold}")
    return {
        "ignore_regions": cfg.MODEL.IGNORE_REGIONS.ENABLED,
        "ignore_ioa_threshold": threshold,
    }


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

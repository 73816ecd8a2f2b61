"""Region proposal network whose anchor labelling respects ignore regions."""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.memory import retry_if_cuda_oom

from .ignore import IgnoreRegionsMixin, covered_by_ignore, split_ignored

__all__ = ["PedestrianRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class PedestrianRPN(IgnoreRegionsMixin, RPN):
    """:class:`RPN` for targets with ignore regions (``gt_ignore``, bool per box).

    Anchors are matched against the non-ignored boxes only, so an ignore box never makes a
    positive. With ``ignore_regions`` on, an anchor the matcher labels background that an
    ignore box covers (IoA >= ``ignore_ioa_threshold``) gets label -1 and is never sampled.
    Targets without ``gt_ignore`` are labelled exactly as by Detectron2's RPN.

    Inside :meth:`recording_targets` it also records the targets of its training forwards (read by
    the distiller's "rpn" recorder, :mod:`hkd_d2.modeling.recorders`).
    """

    # The list recording_targets() collects into; None (the class value) when not recording.
    _recorded_targets: Optional[list] = None

    @contextmanager
    def recording_targets(self) -> Iterator[List[Tuple[List[torch.Tensor], List[torch.Tensor]]]]:
        """Collect the ``(gt_labels, gt_boxes)`` of every :meth:`label_and_sample_anchors` call
        made inside the block: the targets the RPN's losses use."""
        self._recorded_targets = records = []
        try:
            yield records
        finally:
            del self._recorded_targets

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            anchors: anchors of each feature map, A anchors in all.
            gt_instances: N ``Instances`` with ``gt_boxes`` and optionally ``gt_ignore``.

        Returns:
            list[Tensor]: N label vectors ``(A,)`` in {-1, 0, 1} (ignore, background,
                foreground), subsampled as by :class:`RPN`.
            list[Tensor]: N ``(A, 4)`` matched gt boxes (meaningful where the label is 1).
        """
        if any(x.has("gt_ignore") for x in gt_instances):
            all_anchors = Boxes.cat(anchors)
            labels_and_boxes = [self._label_image_anchors(all_anchors, x) for x in gt_instances]
            targets = [labels for labels, _ in labels_and_boxes], [boxes for _, boxes in labels_and_boxes]
        else:
            targets = super().label_and_sample_anchors(anchors, gt_instances)
        if self._recorded_targets is not None:
            self._recorded_targets.append(targets)
        return targets

    def _label_image_anchors(
        self, anchors: Boxes, targets: Instances
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(A,)`` and matched gt boxes ``(A, 4)`` of one image's A anchors."""
        kept, ignore_boxes = split_ignored(targets)
        gt_boxes = kept.gt_boxes
        matched_idxs, labels = retry_if_cuda_oom(self.anchor_matcher)(
            retry_if_cuda_oom(pairwise_iou)(gt_boxes, anchors)
        )
        labels = labels.to(device=gt_boxes.device)
        if self.ignore_regions:
            covered = covered_by_ignore(anchors, ignore_boxes, self.ignore_ioa_threshold)
            labels[(labels == 0) & covered] = -1
        if self.anchor_boundary_thresh >= 0:
            labels[~anchors.inside_box(targets.image_size, self.anchor_boundary_thresh)] = -1
        labels = self._subsample_labels(labels)
        if len(gt_boxes) == 0:
            return labels, torch.zeros_like(anchors.tensor)
        return labels, gt_boxes[matched_idxs].tensor

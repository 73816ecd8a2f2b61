"""Box head for pedestrians: a pluggable RoI pooler, ignore-aware sampling, and one entry point
(:meth:`PedestrianROIHeads.pool_and_predict`) that the distiller calls on student and teacher."""
from typing import Dict, List, Tuple

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou

from .ignore import IgnoreRegionsMixin, covered_by_ignore, split_ignored
from .pyramid_pooler import build_box_pooler

__all__ = ["PedestrianROIHeads"]


@ROI_HEADS_REGISTRY.register()
class PedestrianROIHeads(IgnoreRegionsMixin, StandardROIHeads):
    """:class:`StandardROIHeads` whose box pooler comes from ``ROI_POOLER_REGISTRY`` and whose
    proposal sampling respects ignore regions (targets' ``gt_ignore``).

    Sampling: ignore boxes are never matched, so they never make positives and are not
    appended as ground-truth proposals. With ``ignore_regions`` on, a proposal the matcher
    labels background and that an ignore box covers (IoA >= ``ignore_ioa_threshold``) is
    never sampled. Targets without ``gt_ignore`` are handled exactly as by Detectron2.
    """

    # Constants for TorchScript, as ``detectron2.export`` annotates StandardROIHeads (a subclass
    # has annotations of its own): scripting then skips the absent mask and keypoint heads.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def _init_box_head(cls, cfg, input_shape) -> Dict:
        # Every registered pooler returns (R, C, S, S) like Detectron2's, so the box head and
        # predictor built by the parent fit either; only the pooler is replaced.
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = build_box_pooler(cfg, input_shape)
        return ret

    def pool_and_predict(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Pool RoI features and run the box head and predictor on them.

        Args:
            features: feature maps by name, each ``Tensor (N, C, H_l, W_l)``; the levels in
                ``self.box_in_features`` are used.
            proposals: N ``Instances`` with ``proposal_boxes``, R boxes in all.

        Returns:
            Tensor (R, C, S, S): pooled RoI features (the box pooler's output).
            Tuple: class scores ``Tensor (R, K+1)`` (logits, background last) and box
                deltas ``Tensor (R, 4K)`` (or ``(R, 4)`` with class-agnostic regression).
        """
        pooled = self.box_pooler(
            [features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals]
        )
        return pooled, self.box_predictor(self.box_head(pooled))

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Box branch on top of :meth:`pool_and_predict`.

        No return annotation, as in Detectron2: scripting drops the training branch (a frozen
        ``training``) and infers ``List[Instances]``; a ``Union`` would not fit its callers.

        Returns:
            In training, the box losses (and, with ``train_on_pred_boxes``, ``proposals``
            get the predicted boxes as ``proposal_boxes``); in inference, the detections.
        """
        _, predictions = self.pool_and_predict(features, proposals)
        if not self.training:
            return self.box_predictor.inference(predictions, proposals)[0]
        losses = self.box_predictor.losses(predictions, proposals)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
            for proposals_per_image, boxes in zip(proposals, pred_boxes):
                proposals_per_image.proposal_boxes = Boxes(boxes)
        return losses

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """Detectron2's matching and sampling against the non-ignored targets only, after
        leaving out the proposals that are background inside an ignore region.

        Args:
            proposals: N ``Instances`` with ``proposal_boxes`` and ``objectness_logits``.
            targets: N ``Instances`` with ``gt_boxes``, ``gt_classes`` and optionally
                ``gt_ignore`` (bool).

        Returns:
            As :meth:`StandardROIHeads.label_and_sample_proposals` (no ``gt_ignore`` field).
        """
        split = [split_ignored(t) for t in targets]
        if self.ignore_regions:
            proposals = [
                self._drop_ignored_background(p, kept, ignore_boxes)
                for p, (kept, ignore_boxes) in zip(proposals, split)
            ]
        return super().label_and_sample_proposals(proposals, [kept for kept, _ in split])

    def _drop_ignored_background(
        self, proposals: Instances, targets: Instances, ignore_boxes: Boxes
    ) -> Instances:
        """Remove the proposals that the matcher labels background (0) against ``targets``
        and that ``ignore_boxes`` cover; removing them is labelling them -1 (never sampled)."""
        if len(ignore_boxes) == 0:
            return proposals
        boxes = proposals.proposal_boxes
        _, match_labels = self.proposal_matcher(pairwise_iou(targets.gt_boxes, boxes))
        ignored = (match_labels == 0) & covered_by_ignore(
            boxes, ignore_boxes, self.ignore_ioa_threshold
        )
        return proposals[~ignored]

"""``PCLDistiller``: online knowledge distillation by peer collaborative learning (PCL, Wu and Gong,
AAAI 2021) on a Faster R-CNN, with or without an offline teacher.

One training step (N images; m peers of :class:`~hkd_d2.modeling.pcl.PCLROIHeads`; R RoIs of the
shared distillation sample):

1. the shared layers once: preprocess, backbone + FPN, RPN (its losses);
2. one *shared* RoI sample from the proposals, the RoIs of every distillation loss: every peer, the
   ensemble teacher, the mean teacher and an offline teacher's box head read the same R RoIs;
   every peer's box head and predictor run on them (one pooling);
3. each peer's detection loss (``loss_cls_peer{k}``, ``loss_box_reg_peer{k}``) on a RoI sample of
   its own (``MODEL.PCL.PEER_SAMPLING``; else on the shared sample);
4. the peer ensemble teacher: a linear classifier on the m peers' concatenated box features of the
   shared RoIs, trained with cross-entropy (``loss_cls_ensemble``, a detection loss);
5. the peer mean teacher (:mod:`~hkd_d2.modeling.pcl.mean_teacher`, no gradient): its backbone on
   the same images, every mean peer on the shared RoIs;
6. the online distillation losses on the shared RoIs' class logits, at temperature T (times T^2):
   ``loss_pcl_ensemble = sum_k KD(z_k, z_e)`` and
   ``loss_pcl_mean = sum_k 1/(m-1) sum_{l != k} KD(z_k, z'_l)``, each times its weight
   (``MODEL.PCL.ENSEMBLE_WEIGHT`` / ``MEAN_WEIGHT``) and the ramp-up ``w = exp(-5 (1 - p)^2)``,
   p = iteration / ``RAMPUP_ITERS`` (``SOLVER.MAX_ITER`` by default) clipped to 1; w = 1 outside a
   trainer, as every schedule of the :class:`~hkd_d2.modeling.Distiller`;
7. with distillation terms (``MODEL.DISTILL.TERMS``), the offline teacher's terms as for the plain
   :class:`~hkd_d2.modeling.Distiller`: they read the shared FPN maps (``features``), the shared RoIs
   and their pooled features, and the *deployed* peer's logits and deltas on them (``roi``), so the
   offline teacher distils into the peer that is exported; a term's factor on ``loss_cls`` scales
   that peer's. The other peers learn from it through the shared layers and the peer teachers.

After the optimizer step :class:`~hkd_d2.modeling.pcl.MeanTeacherHook` updates the mean teacher.
Box regression is not distilled (PCL distils class probabilities). Evaluation and export use the
mean teacher's deployed peer (``MODEL.PCL.DEPLOY_PEER``): :meth:`PCLDistiller.inference`,
:meth:`PCLDistiller.deployed_weights`.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable, get_cfg
from detectron2.layers import cat, cross_entropy
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances

from ...config import add_hkd_config
from ..distiller import Distiller, StepLosses
from ..recorders import RoIOutputs, StudentForward
from ..roi_heads import PedestrianROIHeads
from .losses import ema_alpha, peer_ensemble_kd, peer_mean_kd, rampup_weight
from .mean_teacher import MEAN_TEACHER_KEY, MeanTeacherHook, build_mean_teacher, track_live_weights
from .roi_heads import PCLROIHeads, PeerOutputs, single_peer_state_dict

__all__ = ["PCLDistiller", "PCLForward"]

ENSEMBLE_LOSS = "loss_pcl_ensemble"
MEAN_LOSS = "loss_pcl_mean"
# A plain box predictor's losses; each peer reports its own as "<name>_peer<k>".
BOX_LOSSES = ("loss_cls", "loss_box_reg")


@dataclass(frozen=True)
class PCLForward(StudentForward):
    """The student's forward (``proposals``: the shared sample) plus the peers' outputs on it."""

    # Every peer on the shared RoIs.
    peers: PeerOutputs
    # The ensemble teacher's (R, K+1) logits on them.
    ensemble: torch.Tensor


@META_ARCH_REGISTRY.register()
class PCLDistiller(Distiller):
    """A :class:`~hkd_d2.modeling.Distiller` whose student trains m peers with PCL's peer ensemble and
    peer mean teachers (see the module docstring); distillation terms of an offline teacher are optional."""

    training_hooks = (MeanTeacherHook,)

    @configurable
    def __init__(self, *, temperature: float, ema_decay: float, rampup_iters: int, ensemble_weight: float,
                 mean_weight: float, **kwargs):
        """
        Args:
            temperature: T of both KD losses.
            ema_decay: the mean teacher's largest decay.
            rampup_iters: iterations of the KD ramp-up (0: no ramp-up, w = 1).
            ensemble_weight, mean_weight: weights of ``loss_pcl_ensemble`` / ``loss_pcl_mean``.
            kwargs: as :class:`~hkd_d2.modeling.Distiller`; the ROI heads are :class:`PCLROIHeads`.
        """
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, PCLROIHeads):
            raise TypeError(f"PCLDistiller needs MODEL.ROI_HEADS.NAME 'PCLROIHeads', got {type(self.roi_heads).__name__}")
        if temperature <= 0 or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"MODEL.PCL.TEMPERATURE must be > 0 (got {temperature}) and MODEL.PCL.EMA_DECAY "
                             f"in [0, 1) (got {ema_decay})")
        self.temperature, self.ema_decay, self.rampup_iters = temperature, ema_decay, rampup_iters
        self.pcl_weights = {ENSEMBLE_LOSS: ensemble_weight, MEAN_LOSS: mean_weight}
        # Plain attribute, not a submodule: outside state_dict/parameters/optimizer/DDP, never trained.
        object.__setattr__(self, "_mean_teacher", build_mean_teacher(self))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        pcl = cfg.MODEL.PCL
        ret.update(temperature=pcl.TEMPERATURE, ema_decay=pcl.EMA_DECAY,
                   rampup_iters=(pcl.RAMPUP_ITERS or cfg.SOLVER.MAX_ITER) if pcl.RAMPUP else 0,
                   ensemble_weight=pcl.ENSEMBLE_WEIGHT, mean_weight=pcl.MEAN_WEIGHT)
        return ret

    @classmethod
    def deployed_config(cls, cfg: CfgNode) -> CfgNode:
        """One peer in plain :class:`PedestrianROIHeads`; the PCL keys at their defaults."""
        cfg.MODEL.ROI_HEADS.NAME = PedestrianROIHeads.__name__
        cfg.MODEL.PCL = add_hkd_config(get_cfg()).MODEL.PCL.clone()
        return cfg

    @classmethod
    def deployed_weights(cls, cfg: CfgNode, checkpoint: Dict[str, Any], source: str) -> Dict[str, torch.Tensor]:
        """The mean teacher's ``MODEL.PCL.DEPLOY_PEER`` as a plain detector's state dict."""
        if MEAN_TEACHER_KEY not in checkpoint:
            raise ValueError(f"{source} holds no PCL mean teacher (no '{MEAN_TEACHER_KEY}' entry): "
                             "not a checkpoint of a PCLDistiller training")
        return single_peer_state_dict(checkpoint[MEAN_TEACHER_KEY], cfg.MODEL.PCL.DEPLOY_PEER, cfg.MODEL.PCL.NUM_PEERS)

    def extra_checkpointables(self) -> Dict[str, Any]:
        return {MEAN_TEACHER_KEY: self._mean_teacher}

    @property
    def mean_teacher(self):
        """The peer mean teacher, a ``GeneralizedRCNN`` with :class:`PCLROIHeads` (eval mode)."""
        return self._mean_teacher

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._mean_teacher._apply(fn)
        return self

    def update_mean_teacher(self, step: int) -> float:
        """One EMA update of the mean teacher as update ``step`` (0-based); returns its decay."""
        alpha = ema_alpha(step, self.ema_decay)
        track_live_weights(self._mean_teacher, self, alpha)
        return alpha

    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]],
                  detected_instances: Optional[List[Instances]] = None, do_postprocess: bool = True):
        """The mean teacher's detections with the deployed peer (what PCL deploys)."""
        return self._mean_teacher.inference(batched_inputs, detected_instances, do_postprocess)

    def kd_scale(self, iteration: Optional[int]) -> float:
        """The ramp-up factor of the online distillation losses at ``iteration`` (1 when None)."""
        if iteration is None or self.rampup_iters <= 0:
            return 1.0
        return rampup_weight(iteration / self.rampup_iters)

    def _scale_detector_losses(self, losses: Dict[str, torch.Tensor]) -> None:
        # The terms read the deployed peer's box-head outputs: their factors on a plain detector's
        # box losses scale that peer's.
        aliases = {f"{name}_peer{self.roi_heads.deploy_peer}": name for name in BOX_LOSSES}
        plain = {aliases.get(key, key): value for key, value in losses.items()}
        super()._scale_detector_losses(plain)
        losses.update({key: plain[aliases.get(key, key)] for key in losses})

    def _box_forward(self, images: ImageList, gt_instances: List[Instances], features: Dict[str, torch.Tensor],
                     proposals: List[Instances]) -> Tuple[PCLForward, Dict[str, torch.Tensor]]:
        """Steps 2-4 of the module docstring: the shared sample and every peer on it, each peer's
        losses on its own sample, the ensemble's cross-entropy; the terms read the deployed peer."""
        heads: PCLROIHeads = self.roi_heads
        shared = heads.label_and_sample_proposals(proposals, gt_instances)
        on_shared = heads.forward_peers(features, shared)
        losses = self._peer_losses(features, heads.sample_peers(proposals, gt_instances, shared), shared, on_shared)
        ensemble = heads.ensemble_logits(on_shared.features)
        losses["loss_cls_ensemble"] = cross_entropy(ensemble, cat([p.gt_classes for p in shared], dim=0))
        k = heads.deploy_peer
        roi = RoIOutputs(on_shared.pooled, on_shared.scores[k], on_shared.deltas[k])
        return PCLForward(images, gt_instances, features, shared, roi, on_shared, ensemble), losses

    def _peer_losses(self, features: Dict[str, torch.Tensor], samples: List[List[Instances]],
                     shared: List[Instances], on_shared: PeerOutputs) -> Dict[str, torch.Tensor]:
        """Every peer's box losses on its own sample, named ``<loss>_peer<k>``."""
        losses = {}
        for k, sample in enumerate(samples):
            out, i = (on_shared, k) if sample is shared else (self.roi_heads.forward_peers(features, sample, [k]), 0)
            peer = self.roi_heads.peer(k)[1].losses((out.scores[i], out.deltas[i]), sample)
            losses.update({f"{name}_peer{k}": value for name, value in peer.items()})
        return losses

    @torch.no_grad()
    def _mean_peer_scores(self, images: ImageList, rois: List[Instances]) -> List[torch.Tensor]:
        """Every mean peer's (R, K+1) logits on ``rois`` (the images as the live model normalised them)."""
        mean = self._mean_teacher
        return mean.roi_heads.forward_peers(mean.backbone(images.tensor), rois).scores

    def _online_losses(self, step: PCLForward) -> Dict[str, torch.Tensor]:
        """The raw PCL distillation losses (those of weight 0 left out)."""
        scores = step.peers.scores
        raw = {}
        if self.pcl_weights[ENSEMBLE_LOSS]:
            raw[ENSEMBLE_LOSS] = peer_ensemble_kd(scores, step.ensemble, self.temperature)
        if self.pcl_weights[MEAN_LOSS]:
            raw[MEAN_LOSS] = peer_mean_kd(scores, self._mean_peer_scores(step.images, step.proposals), self.temperature)
        return raw

    def _step_losses(self, batched_inputs: List[Dict]) -> StepLosses:
        step, recorded, detection = self._student_forward(batched_inputs)
        offline = self._term_losses(batched_inputs, step, recorded, detection)
        raw = self._online_losses(step)
        scale = self.kd_scale(self.distill_iter)
        online = {name: self.pcl_weights[name] * scale * value for name, value in raw.items()}
        # The raw values; the ramp-up factor is logged as each loss's distill/scale_<loss>.
        stats = {f"pcl/{name[len('loss_pcl_'):]}_kd": value.detach() for name, value in raw.items()}
        return StepLosses(offline.detection, {**offline.distillation, **online}, offline.raw,
                          {**offline.scales, **{name: scale for name in online}}, {**offline.stats, **stats})

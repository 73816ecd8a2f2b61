"""``PCLROIHeads``: m peer box heads (box head + box predictor each) and the peer ensemble teacher's
classifier, on one shared RoI pooler.

The peers are the branches of peer collaborative learning (PCL, Wu and Gong, AAAI 2021): everything
below them (backbone, FPN, RPN, the pooler) is shared. Peer 0 is the plain ``box_head`` /
``box_predictor`` of :class:`~hkd_d2.modeling.roi_heads.PedestrianROIHeads`; peers 1..m-1 are
``peer_heads.{k-1}`` / ``peer_predictors.{k-1}``, each initialised on its own (different random
weights are a first source of diversity). The ensemble classifier ``ensemble`` is a linear layer on
the concatenated box-head features of all peers, (R, m D) -> (R, K+1), initialised as Detectron2's
class scores (normal, std 0.01).

Diversity that costs no extra backbone pass (the paper's peer-specific input augmentation would
cost m backbone passes per step and is left out): each peer samples its own RoIs from the shared
proposals for its detection loss (``MODEL.PCL.PEER_SAMPLING``), and optional dropout on each peer's
box features in training (``MODEL.PCL.PEER_DROPOUT``).

In inference these heads are the deployed peer's (``MODEL.PCL.DEPLOY_PEER``) alone, exactly as a
``PedestrianROIHeads`` holding that peer's weights (:func:`single_peer_state_dict`). Training goes
through :class:`~hkd_d2.modeling.pcl.PCLDistiller`, which calls :meth:`PCLROIHeads.sample_peers`,
:meth:`PCLROIHeads.forward_peers` and :meth:`PCLROIHeads.ensemble_logits`.

Shapes: R RoIs, C channels, S pooler resolution, D box-head feature size, K classes, m peers.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, FastRCNNOutputLayers, build_box_head
from detectron2.structures import Instances

from ..roi_heads import PedestrianROIHeads

__all__ = ["PCLROIHeads", "PeerOutputs", "peer_module_names", "single_peer_state_dict"]

# Names of a plain box head's two modules under ROI heads (what the deployed peer becomes).
PLAIN_PARTS = ("box_head", "box_predictor")
ENSEMBLE = "ensemble"


def peer_module_names(peer: int) -> Tuple[str, str]:
    """Module names of peer ``peer``'s box head and predictor under the ROI heads."""
    return PLAIN_PARTS if peer == 0 else (f"peer_heads.{peer - 1}", f"peer_predictors.{peer - 1}")


def single_peer_state_dict(state: Dict[str, torch.Tensor], peer: int, num_peers: int,
                           prefix: str = "roi_heads.") -> Dict[str, torch.Tensor]:
    """A :class:`PCLROIHeads` detector's ``state`` as a plain detector holding peer ``peer`` only:
    that peer's modules renamed to ``box_head`` / ``box_predictor``, the other peers and the
    ensemble classifier dropped, every other key kept."""
    renamed = {f"{prefix}{src}.": f"{prefix}{dst}." for src, dst in zip(peer_module_names(peer), PLAIN_PARTS)}
    dropped = tuple(f"{prefix}{name}." for k in range(num_peers) for name in peer_module_names(k)) + (f"{prefix}{ENSEMBLE}.",)
    out = {}
    for key, value in state.items():
        source = next((s for s in renamed if key.startswith(s)), None)
        if source is not None:
            out[renamed[source] + key[len(source):]] = value
        elif not key.startswith(dropped):
            out[key] = value
    return out


@dataclass(frozen=True)
class PeerOutputs:
    """Every peer's outputs on one set of RoIs (one pooling shared by the peers)."""

    # Pooled RoI features (R, C, S, S).
    pooled: torch.Tensor
    # Per peer (R, D): box-head features (after the peer's dropout in training).
    features: List[torch.Tensor]
    # Per peer (R, K+1): class logits, background last.
    scores: List[torch.Tensor]
    # Per peer (R, 4K) box deltas ((R, 4) with class-agnostic regression).
    deltas: List[torch.Tensor]


@ROI_HEADS_REGISTRY.register()
class PCLROIHeads(PedestrianROIHeads):
    """:class:`PedestrianROIHeads` with ``MODEL.PCL.NUM_PEERS`` peer box heads and the PCL ensemble
    classifier (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        peer_heads: nn.ModuleList,
        peer_predictors: nn.ModuleList,
        ensemble: nn.Linear,
        deploy_peer: int = 0,
        peer_sampling: bool = True,
        peer_dropout: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            peer_heads, peer_predictors: box heads and predictors of peers 1..m-1 (peer 0 is
                ``box_head`` / ``box_predictor`` of ``kwargs``).
            ensemble: the ensemble classifier, (R, m D) -> (R, K+1).
            deploy_peer: the peer used in inference (and exported).
            peer_sampling: every peer samples its own RoIs for its detection loss.
            peer_dropout: dropout probability on each peer's box features in training.
            kwargs: as :class:`PedestrianROIHeads`.
        """
        super().__init__(**kwargs)
        self.peer_heads = peer_heads
        self.peer_predictors = peer_predictors
        self.ensemble = ensemble
        self.num_peers = len(peer_heads) + 1
        if not 0 <= deploy_peer < self.num_peers:
            raise ValueError(f"MODEL.PCL.DEPLOY_PEER {deploy_peer} is not a peer (0 .. {self.num_peers - 1})")
        if not 0.0 <= peer_dropout < 1.0:
            raise ValueError(f"MODEL.PCL.PEER_DROPOUT must be in [0, 1), got {peer_dropout}")
        self.deploy_peer = deploy_peer
        self.peer_sampling = peer_sampling
        self.peer_dropout = peer_dropout

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        pcl = cfg.MODEL.PCL
        if pcl.NUM_PEERS < 2:
            raise ValueError(f"MODEL.PCL.NUM_PEERS must be at least 2 (a peer learns from the others), got {pcl.NUM_PEERS}")
        channels = {input_shape[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES}
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooled = ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)
        heads, predictors = nn.ModuleList(), nn.ModuleList()
        for _ in range(pcl.NUM_PEERS - 1):
            heads.append(build_box_head(cfg, pooled))
            predictors.append(FastRCNNOutputLayers(cfg, heads[-1].output_shape))
        shape = ret["box_head"].output_shape
        width = shape.channels * (shape.width or 1) * (shape.height or 1)
        ensemble = nn.Linear(pcl.NUM_PEERS * width, cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1)
        nn.init.normal_(ensemble.weight, std=0.01)
        nn.init.constant_(ensemble.bias, 0)
        ret.update(peer_heads=heads, peer_predictors=predictors, ensemble=ensemble, deploy_peer=pcl.DEPLOY_PEER,
                   peer_sampling=pcl.PEER_SAMPLING, peer_dropout=pcl.PEER_DROPOUT)
        return ret

    def peer(self, k: int) -> Tuple[nn.Module, FastRCNNOutputLayers]:
        """Peer ``k``'s box head and box predictor."""
        if k == 0:
            return self.box_head, self.box_predictor
        return self.peer_heads[k - 1], self.peer_predictors[k - 1]

    def sample_peers(self, proposals: List[Instances], targets: List[Instances],
                     shared: List[Instances]) -> List[List[Instances]]:
        """The RoIs each peer's detection loss trains on: a sample of its own from ``proposals``
        (``peer_sampling``), else the ``shared`` sample for every peer."""
        if not self.peer_sampling:
            return [shared] * self.num_peers
        return [self.label_and_sample_proposals(proposals, targets) for _ in range(self.num_peers)]

    def forward_peers(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                      peers: Optional[Sequence[int]] = None) -> PeerOutputs:
        """Pool ``proposals`` (R boxes in all) once and run the box head and predictor of each of
        ``peers`` (default: all, in order) on the pooled features."""
        pooled = self.box_pooler([features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals])
        box_features, scores, deltas = [], [], []
        for k in range(self.num_peers) if peers is None else peers:
            head, predictor = self.peer(k)
            x = F.dropout(torch.flatten(head(pooled), start_dim=1), self.peer_dropout, self.training)
            s, d = predictor(x)
            box_features.append(x)
            scores.append(s)
            deltas.append(d)
        return PeerOutputs(pooled, box_features, scores, deltas)

    def ensemble_logits(self, box_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The peer ensemble teacher's (R, K+1) logits from the m peers' (R, D) box features."""
        return self.ensemble(torch.cat(list(box_features), dim=1))

    def pool_and_predict(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """As :meth:`PedestrianROIHeads.pool_and_predict`, with the deployed peer's box head."""
        out = self.forward_peers(features, proposals, [self.deploy_peer])
        return out.pooled, (out.scores[0], out.deltas[0])

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Inference with the deployed peer (its detections); training is the PCLDistiller's."""
        if self.training:
            raise RuntimeError("PCLROIHeads train inside MODEL.META_ARCHITECTURE 'PCLDistiller'")
        _, predictions = self.pool_and_predict(features, proposals)
        return self.peer(self.deploy_peer)[1].inference(predictions, proposals)[0]

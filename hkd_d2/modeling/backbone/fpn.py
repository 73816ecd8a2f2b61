"""Detectron2's FPN (P2..P6, names and strides as ``build_resnet_fpn_backbone`` gives them) on any
bottom-up backbone, from ``MODEL.FPN.*``."""
from detectron2.config import CfgNode
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = ["build_fpn"]


def build_fpn(cfg: CfgNode, bottom_up: Backbone) -> FPN:
    """FPN over ``bottom_up``'s ``MODEL.FPN.IN_FEATURES`` with a max-pooled P6, as Detectron2's ResNet-FPN."""
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

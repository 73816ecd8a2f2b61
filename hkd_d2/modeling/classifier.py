"""An image classifier on a detector's bottom-up ResNet: what :mod:`hkd_d2.tools.pretrain` trains.

The backbone is built by Detectron2's ``build_resnet_backbone`` from the detector's own config
(depth, norm, stride in 1x1, stem), so its ``state_dict`` keys and shapes are those of the
detector's ``backbone.bottom_up``; the head is a global average pool of the coarsest output
(``res5``) and a linear layer. Images are normalised with the config's ``MODEL.PIXEL_MEAN`` /
``PIXEL_STD``, as the detector normalises them.

The last norm of every residual branch starts at zero ("zero-gamma", Goyal et al. 2017, torchvision's
``zero_init_residual``): each block starts as the identity, so a deep ResNet trained from scratch
starts as a shallow one and does not diverge in its first steps.
"""
from typing import Dict, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, build_resnet_backbone
from torch import nn

__all__ = ["RESNET_BACKBONES", "BackboneClassifier"]

# MODEL.BACKBONE.NAME values whose bottom-up is build_resnet_backbone's ResNet.
RESNET_BACKBONES = ("build_resnet_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone")
HEAD_INIT_STD = 0.01  # std of the linear head's initial weights


class BackboneClassifier(nn.Module):
    """Backbone + global average pool + linear: images (N, C, H, W) -> class logits (N, K).

    Inputs are pixel values in the config's ``INPUT.FORMAT`` (e.g. BGR, 0..255).
    """

    @configurable
    def __init__(self, *, backbone: Backbone, num_classes: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], zero_init_residual: bool = True):
        """
        Args:
            backbone: a bottom-up backbone; its output of the largest stride is pooled.
            num_classes: K.
            pixel_mean, pixel_std: per-channel normalisation of the input.
            zero_init_residual: start the last norm of each residual branch at zero.
        """
        super().__init__()
        self.backbone = backbone
        if zero_init_residual:
            _zero_init_residual(backbone)
        shapes = backbone.output_shape()
        self.feature = max(shapes, key=lambda name: shapes[name].stride)
        self.head = nn.Linear(shapes[self.feature].channels, num_classes)
        nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int) -> Dict:
        if cfg.MODEL.BACKBONE.NAME not in RESNET_BACKBONES:
            raise ValueError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r} has no ResNet bottom-up to pre-train "
                             f"(supported: {', '.join(RESNET_BACKBONES)})")
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        return {"backbone": backbone, "num_classes": num_classes, "pixel_mean": cfg.MODEL.PIXEL_MEAN,
                "pixel_std": cfg.MODEL.PIXEL_STD}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) float pixel values -> logits (N, K)."""
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)[self.feature]
        return self.head(features.mean(dim=(2, 3)))


def _zero_init_residual(backbone: nn.Module) -> None:
    """Zero the scale of the last norm of every residual branch (basic: conv2, bottleneck: conv3)."""
    for module in backbone.modules():
        last = {BasicBlock: "conv2", BottleneckBlock: "conv3"}.get(type(module))
        if last is not None:
            nn.init.zeros_(getattr(module, last).norm.weight)

"""torchvision's MobileNetV2 as a Detectron2 backbone (res2..res5) and FPN backbone (P2..P6).

``torchvision.models.mobilenet_v2(width_mult, norm_layer)``'s ``features`` are split where the
stride doubles: the stem is the first conv and the first inverted residual (stride 2), res2..res5
end at strides 4, 8, 16 and 32 (24, 32, 96 and 320 channels at width 1.0). The final 1x1 conv to
1280 channels feeds only the classifier and is left out. Each layer becomes a
:class:`~hkd_d2.modeling.backbone.blocks.LayerBlock` of Detectron2's ``ResNet`` container, so
``MODEL.BACKBONE.FREEZE_AT`` works as for a ResNet.

ImageNet weights: ``MODEL.WEIGHTS`` may be a torchvision ``mobilenet_v2`` state dict (``.pth``);
:func:`convert_torchvision_mobilenet_v2` renames it on load (with ``MODEL.MOBILENET.NORM`` "BN"
or "FrozenBN", ``INPUT.FORMAT`` "RGB" and torchvision's pixel mean/std, x255).
"""
from typing import Dict, List, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.resnet import ResNet
from torch import nn
from torchvision.models import mobilenet_v2

from ...checkpoint import BACKBONE_PREFIX, FOREIGN_WEIGHTS
from .blocks import LayerBlock, norm_factory
from .compact import STAGE_NAMES
from .fpn import build_fpn

__all__ = [
    "build_mobilenetv2_backbone",
    "build_mobilenetv2_fpn_backbone",
    "convert_torchvision_mobilenet_v2",
    "is_torchvision_mobilenet_v2",
    "mobilenet_v2_layout",
]

# Stride of the stem (the first conv strides 2; the first inverted residual keeps it).
STEM_STRIDE = 2


def _stride(layer: nn.Module) -> int:
    """Stride of a torchvision InvertedResidual (``.stride``) or Conv2dNormActivation (its conv's)."""
    return int(getattr(layer, "stride", None) or layer[0].stride[0])


def mobilenet_v2_layout(features: nn.Sequential) -> List[Tuple[str, List[int]]]:
    """``[("stem", [0, 1]), ("res2", [2, 3]), ..., ("res5", [14, 15, 16, 17])]``: the indices of
    ``features`` in the stem and in each stage; a new stage starts where a layer strides 2, the last
    1x1 conv (the classifier's) is left out."""
    groups: List[Tuple[str, List[int]]] = [("stem", [])]
    names = iter(STAGE_NAMES)
    for index, layer in enumerate(list(features)[:-1]):
        if _stride(layer) == 2 and index > 0:
            groups.append((next(names), []))
        groups[-1][1].append(index)
    if [name for name, _ in groups[1:]] != list(STAGE_NAMES):
        raise ValueError(f"MobileNetV2 features split into {[n for n, _ in groups]}, expected stem + {list(STAGE_NAMES)}")
    return groups


def _channels(layer: nn.Module) -> int:
    return int(layer.out_channels)


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """torchvision's MobileNetV2 features as res2..res5 (``MODEL.MOBILENET.*``)."""
    node = cfg.MODEL.MOBILENET
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
    features = mobilenet_v2(width_mult=node.WIDTH_MULT, norm_layer=norm_factory(node.NORM)).features
    (_, stem_indices), *stage_groups = mobilenet_v2_layout(features)
    stem_layers = [features[i] for i in stem_indices]
    channels = _channels(stem_layers[-1])
    stem = LayerBlock(nn.Sequential(*stem_layers), 3, channels, STEM_STRIDE)
    stages = []
    for _, indices in stage_groups:
        blocks = []
        for i in indices:
            blocks.append(LayerBlock(features[i], channels, _channels(features[i]), _stride(features[i])))
            channels = _channels(features[i])
        stages.append(blocks)
    return ResNet(stem, stages, out_features=node.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """FPN (P2..P6, ``MODEL.FPN.*``) over :func:`build_mobilenetv2_backbone`."""
    return build_fpn(cfg, build_mobilenetv2_backbone(cfg, input_shape))


def is_torchvision_mobilenet_v2(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True for a torchvision ``mobilenet_v2().state_dict()`` (or one saved from it)."""
    return "features.0.0.weight" in state_dict and "features.1.conv.0.0.weight" in state_dict


def _torchvision_names() -> Dict[str, str]:
    """``features.<i>.`` -> this backbone's prefix of that layer (``stem.layer.1.``, ``res3.2.layer.``)."""
    names = {}
    for group, indices in mobilenet_v2_layout(mobilenet_v2().features):
        for position, index in enumerate(indices):
            names[f"features.{index}."] = (f"stem.layer.{position}." if group == "stem"
                                           else f"{group}.{position}.layer.")
    return names


def convert_torchvision_mobilenet_v2(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a torchvision MobileNetV2 state dict to this backbone's Detectron2 keys; the
    classifier, the last 1x1 conv and BatchNorm's ``num_batches_tracked`` counters are dropped."""
    names = _torchvision_names()
    converted = {}
    for name, value in state_dict.items():
        prefix = ".".join(name.split(".")[:2]) + "."
        if prefix in names and not name.endswith("num_batches_tracked"):
            converted[BACKBONE_PREFIX + names[prefix] + name[len(prefix):]] = value
    return converted


FOREIGN_WEIGHTS.append(("torchvision MobileNetV2", is_torchvision_mobilenet_v2, convert_torchvision_mobilenet_v2))

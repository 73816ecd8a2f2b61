"""Blocks of the compact and MobileNetV2 backbones as Detectron2 ``CNNBlockBase`` blocks, so that
Detectron2's ``ResNet`` container (a stem and stages of such blocks, ``res2``..``res5``) stacks them.

A compact stage is a body of ``depth`` blocks of one kind (:data:`COMPACT_BLOCK_REGISTRY`),
the first one strided, followed by a linear 1x1 projection to the stage's output channels.
Shapes: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride).
"""
import functools
import math
from typing import Callable, List

import fvcore.nn.weight_init as weight_init
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.utils.registry import Registry
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

__all__ = [
    "COMPACT_BLOCK_REGISTRY",
    "LayerBlock",
    "norm_factory",
    "projection",
]

# GroupNorm's group count where the channels allow it (Detectron2's "GN"); fewer where they do not.
GN_GROUPS = 32

COMPACT_BLOCK_REGISTRY = Registry("COMPACT_BLOCK")
COMPACT_BLOCK_REGISTRY.__doc__ = """
Kinds of compact-stage bodies. Each is called as
``fn(in_channels, width, depth, stride, expansion, norm) -> List[CNNBlockBase]`` (the first block
strided, the rest at stride 1) and returns the body's blocks.
"""


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(GN_GROUPS, channels), channels)


def _identity(channels: int) -> nn.Module:
    return nn.Identity()


def norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """``channels -> norm module`` for a Detectron2 norm name: "GN" takes gcd(32, channels) groups
    (MobileNet widths such as 24 or 144 are not multiples of 32); "" gives no norm."""
    if norm == "GN":
        return _group_norm
    if not norm:
        return _identity
    return functools.partial(get_norm, norm)


class LayerBlock(CNNBlockBase):
    """Any layer (a torchvision block, a conv) as a ``CNNBlockBase`` with known channels and stride."""

    def __init__(self, layer: nn.Module, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, stride)
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def projection(in_channels: int, out_channels: int) -> LayerBlock:
    """The linear 1x1 conv (with bias, no norm, no activation) that ends every compact stage."""
    return LayerBlock(nn.Conv2d(in_channels, out_channels, kernel_size=1), in_channels, out_channels, 1)


def _with_strided_shortcut(block: CNNBlockBase, norm: Callable[[int], nn.Module]) -> CNNBlockBase:
    """Give a strided ResNet block whose channels do not change the projection shortcut that
    Detectron2 builds only when they do (an identity shortcut cannot stride)."""
    if block.stride != 1 and block.shortcut is None:
        block.shortcut = Conv2d(block.in_channels, block.out_channels, kernel_size=1, stride=block.stride,
                                bias=False, norm=norm(block.out_channels))
        weight_init.c2_msra_fill(block.shortcut)
    return block


@COMPACT_BLOCK_REGISTRY.register()
def basic(in_channels: int, width: int, depth: int, stride: int, expansion: float, norm: str) -> List[CNNBlockBase]:
    """ResNet basic blocks (two 3x3 convs) of ``width`` channels."""
    make = norm_factory(norm)
    return [_with_strided_shortcut(BasicBlock(in_channels if i == 0 else width, width,
                                              stride=stride if i == 0 else 1, norm=make), make)
            for i in range(depth)]


@COMPACT_BLOCK_REGISTRY.register()
def bottleneck(in_channels: int, width: int, depth: int, stride: int, expansion: float, norm: str) -> List[CNNBlockBase]:
    """ResNet bottleneck blocks (1x1, 3x3, 1x1) of inner ``width``, output 4x ``width``; the
    3x3 conv strides (as torchvision's)."""
    make, out = norm_factory(norm), 4 * width
    return [_with_strided_shortcut(BottleneckBlock(in_channels if i == 0 else out, out, bottleneck_channels=width,
                                                   stride=stride if i == 0 else 1, norm=make,
                                                   stride_in_1x1=False), make)
            for i in range(depth)]


@COMPACT_BLOCK_REGISTRY.register()
def inverted_residual(in_channels: int, width: int, depth: int, stride: int, expansion: float,
                      norm: str) -> List[CNNBlockBase]:
    """MobileNetV2 inverted residuals (torchvision's): 1x1 expansion to input x ``expansion``,
    3x3 depthwise, linear 1x1 projection to ``width``; residual where the shapes allow it."""
    blocks = []
    for i in range(depth):
        c_in, s = (in_channels, stride) if i == 0 else (width, 1)
        layer = InvertedResidual(c_in, width, s, expansion, norm_layer=norm_factory(norm))
        blocks.append(LayerBlock(layer, c_in, width, s))
    return blocks


@COMPACT_BLOCK_REGISTRY.register()
def separable(in_channels: int, width: int, depth: int, stride: int, expansion: float, norm: str) -> List[CNNBlockBase]:
    """Depthwise-separable blocks (MobileNetV1): 3x3 depthwise, norm, ReLU, 1x1 to ``width``, norm, ReLU."""
    make, blocks = norm_factory(norm), []
    for i in range(depth):
        c_in, s = (in_channels, stride) if i == 0 else (width, 1)
        layer = nn.Sequential(Conv2dNormActivation(c_in, c_in, 3, s, groups=c_in, norm_layer=make),
                              Conv2dNormActivation(c_in, width, 1, norm_layer=make))
        blocks.append(LayerBlock(layer, c_in, width, s))
    return blocks

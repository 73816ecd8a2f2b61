"""The compact backbone: a stem and four stages (res2..res5) whose blocks are chosen per stage,
as ``hkd-compress`` chooses them under a compute budget (see :mod:`hkd_d2.compress`).

Stage ``k`` is :func:`build_compact_stage` of :class:`StageSpec` ``k`` (from ``MODEL.COMPACT.*``):
``depth`` blocks of one kind, the first at stride 1 (res2) or 2 (res3..res5), then a linear 1x1
projection to ``out_channels``. Shapes: image (N, 3, H, W) -> res2 (N, C2, H/4, W/4) ... res5
(N, C5, H/32, W/32). The container is Detectron2's ``ResNet`` (stem + stages of ``CNNBlockBase``),
so state-dict names (``stem.conv1.weight``, ``res3.0.conv1.weight``, ``res3.2.layer.weight``) and
``MODEL.BACKBONE.FREEZE_AT`` work as for a ResNet.
"""
from dataclasses import dataclass
from typing import List

from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.resnet import BasicStem, ResNet

from .blocks import COMPACT_BLOCK_REGISTRY, norm_factory, projection
from .fpn import build_fpn

__all__ = [
    "StageSpec",
    "STAGE_NAMES",
    "build_compact_stage",
    "stage_specs",
    "stage_stride",
    "build_compact_backbone",
    "build_compact_fpn_backbone",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# MODEL.COMPACT keys that hold one entry per stage.
PER_STAGE_KEYS = ("BLOCKS", "DEPTHS", "WIDTHS", "EXPANSIONS", "OUT_CHANNELS")


@dataclass(frozen=True)
class StageSpec:
    """One compact stage: ``depth`` blocks of ``kind`` with ``width`` channels (``expansion`` for
    inverted residuals), projected to ``out_channels``."""

    kind: str
    depth: int
    width: int
    expansion: float
    out_channels: int

    def label(self) -> str:
        """Short description, e.g. ``"inverted_residual x2, w32, t6"``."""
        text = f"{self.kind} x{self.depth}, w{self.width}"
        return text + (f", t{self.expansion:g}" if self.kind == "inverted_residual" else "")


def stage_stride(index: int) -> int:
    """Stride of stage ``index`` (0 = res2): the stem already strides 4; every later stage 2."""
    return 1 if index == 0 else 2


def build_compact_stage(spec: StageSpec, in_channels: int, stride: int, norm: str) -> List[CNNBlockBase]:
    """The blocks of one stage: ``spec.depth`` blocks of ``spec.kind``, then the 1x1 projection.

    (N, in_channels, H, W) -> (N, spec.out_channels, H / stride, W / stride).
    """
    if spec.kind not in COMPACT_BLOCK_REGISTRY:
        raise KeyError(f"Unknown compact block kind {spec.kind!r}; choose from "
                       f"{sorted(name for name, _ in COMPACT_BLOCK_REGISTRY)}")
    if spec.depth < 1 or spec.width < 1 or spec.out_channels < 1:
        raise ValueError(f"A compact stage needs depth, width and out_channels >= 1, got {spec}")
    body = COMPACT_BLOCK_REGISTRY.get(spec.kind)(in_channels, spec.width, spec.depth, stride, spec.expansion, norm)
    return [*body, projection(body[-1].out_channels, spec.out_channels)]


def stage_specs(cfg: CfgNode) -> List[StageSpec]:
    """The four :class:`StageSpec` of ``MODEL.COMPACT``; a ValueError names a list of another length."""
    node = cfg.MODEL.COMPACT
    wrong = {k: len(node[k]) for k in PER_STAGE_KEYS if len(node[k]) != len(STAGE_NAMES)}
    if wrong:
        raise ValueError(f"MODEL.COMPACT lists need one entry per stage {list(STAGE_NAMES)}; lengths {wrong}")
    return [StageSpec(kind, int(depth), int(width), float(expansion), int(out))
            for kind, depth, width, expansion, out in zip(*(node[k] for k in PER_STAGE_KEYS))]


@BACKBONE_REGISTRY.register()
def build_compact_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """The compact bottom-up backbone of ``MODEL.COMPACT`` (outputs ``MODEL.COMPACT.OUT_FEATURES``)."""
    node = cfg.MODEL.COMPACT
    stem = BasicStem(input_shape.channels, node.STEM_OUT_CHANNELS, norm=norm_factory(node.STEM_NORM or node.NORM))
    stages, channels = [], node.STEM_OUT_CHANNELS
    for index, spec in enumerate(stage_specs(cfg)):
        stages.append(build_compact_stage(spec, channels, stage_stride(index), node.NORM))
        channels = spec.out_channels
    return ResNet(stem, stages, out_features=node.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_compact_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """FPN (P2..P6, ``MODEL.FPN.*``) over :func:`build_compact_backbone`."""
    return build_fpn(cfg, build_compact_backbone(cfg, input_shape))

"""Backbones beyond Detectron2's own; importing this package registers them (BACKBONE_REGISTRY;
their keys are added by :func:`hkd_d2.config.add_hkd_config`):

* ``build_compact_backbone`` / ``build_compact_fpn_backbone``: stages of chosen blocks
  (``MODEL.COMPACT.*``), written by ``hkd-compress``;
* ``build_mobilenetv2_backbone`` / ``build_mobilenetv2_fpn_backbone``: torchvision's MobileNetV2
  (``MODEL.MOBILENET.*``).
"""
from .blocks import COMPACT_BLOCK_REGISTRY, norm_factory
from .compact import (
    STAGE_NAMES,
    StageSpec,
    build_compact_backbone,
    build_compact_fpn_backbone,
    build_compact_stage,
    stage_specs,
    stage_stride,
)
from .mobilenet import build_mobilenetv2_backbone, build_mobilenetv2_fpn_backbone

__all__ = [
    "COMPACT_BLOCK_REGISTRY",
    "STAGE_NAMES",
    "StageSpec",
    "build_compact_backbone",
    "build_compact_fpn_backbone",
    "build_compact_stage",
    "build_mobilenetv2_backbone",
    "build_mobilenetv2_fpn_backbone",
    "norm_factory",
    "stage_specs",
    "stage_stride",
]

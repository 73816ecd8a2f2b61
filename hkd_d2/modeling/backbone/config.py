"""Config keys of the compact and MobileNetV2 backbones (``MODEL.COMPACT.*``, ``MODEL.MOBILENET.*``).

:func:`hkd_d2.config.add_hkd_config` adds them through its table of extra key groups.
"""
from detectron2.config import CfgNode as CN

from ...config import DISTILL_TERM_CONFIGS

__all__ = ["add_compact_config", "add_mobilenet_config"]


def add_compact_config(cfg: CN) -> None:
    """``MODEL.COMPACT``: the blocks of a compact backbone, one list entry per stage (res2..res5)."""
    cfg.MODEL.COMPACT = CN()
    # Output channels of the stem (a Detectron2 BasicStem: 7x7 conv, norm, ReLU, 3x3 max-pool).
    cfg.MODEL.COMPACT.STEM_OUT_CHANNELS = 64
    # Norm of the stem ("" = NORM); a stem copied from a FrozenBN teacher keeps "FrozenBN" here.
    cfg.MODEL.COMPACT.STEM_NORM = ""
    # Norm of every stage block: "GN" (groups: gcd(32, channels)), "BN", "FrozenBN", "SyncBN", "".
    cfg.MODEL.COMPACT.NORM = "GN"
    # Block kind of each stage (COMPACT_BLOCK_REGISTRY): basic, bottleneck, inverted_residual, separable.
    cfg.MODEL.COMPACT.BLOCKS = ["basic", "basic", "basic", "basic"]
    # Number of blocks of each stage (before its 1x1 output projection).
    cfg.MODEL.COMPACT.DEPTHS = [2, 2, 2, 2]
    # Width of each stage's blocks (a bottleneck block's inner width; its output is 4x that).
    cfg.MODEL.COMPACT.WIDTHS = [64, 128, 256, 512]
    # Expansion factor of the inverted-residual stages (hidden = input channels x factor; others ignore it).
    cfg.MODEL.COMPACT.EXPANSIONS = [6.0, 6.0, 6.0, 6.0]
    # Output channels of each stage: a linear 1x1 projection maps the blocks' output to it.
    cfg.MODEL.COMPACT.OUT_CHANNELS = [64, 128, 256, 512]
    # Stages the backbone returns (the FPN reads MODEL.FPN.IN_FEATURES among them).
    cfg.MODEL.COMPACT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_mobilenet_config(cfg: CN) -> None:
    """``MODEL.MOBILENET``: torchvision's MobileNetV2 as a Detectron2 backbone."""
    cfg.MODEL.MOBILENET = CN()
    # Width multiplier of torchvision's mobilenet_v2 (1.0 = the ImageNet model's channels).
    cfg.MODEL.MOBILENET.WIDTH_MULT = 1.0
    # Norm of every layer: "BN" (torchvision's, needed by its ImageNet weights), "FrozenBN", "GN", "SyncBN".
    cfg.MODEL.MOBILENET.NORM = "BN"
    # Stages the backbone returns: res2..res5 end at strides 4, 8, 16 and 32.
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


# add_hkd_config adds every key group of this table (named like the class or concept declaring it).
DISTILL_TERM_CONFIGS["CompactBackbone"] = add_compact_config
DISTILL_TERM_CONFIGS["MobileNetV2Backbone"] = add_mobilenet_config

"""What the distillation terms share: level checks, feature adapters and the MSE.

Ignore regions are handled by :mod:`hkd_d2.modeling.ignore` (``split_ignored``) everywhere.
"""
from typing import Dict, Iterable

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec

__all__ = ["check_levels", "feature_adapter", "level_adapters", "mse"]


def check_levels(
    what: str,
    levels: Iterable[str],
    student_shapes: Dict[str, ShapeSpec],
    teacher_shapes: Dict[str, ShapeSpec],
) -> None:
    """Raise a ValueError naming ``what`` (e.g. the config key) unless every level is an output of
    both backbones with the same stride."""
    for f in levels:
        if f not in student_shapes or f not in teacher_shapes:
            raise ValueError(
                f"{what}: level '{f}' is not an output of both backbones "
                f"(student {sorted(student_shapes)}, teacher {sorted(teacher_shapes)})"
            )
        if student_shapes[f].stride != teacher_shapes[f].stride:
            raise ValueError(
                f"{what}: level '{f}' has stride {student_shapes[f].stride} in the student, "
                f"{teacher_shapes[f].stride} in the teacher"
            )


def feature_adapter(
    cfg: CfgNode, in_channels: int, out_channels: int, what: str, kernel_size: int = 1, always: bool = False
) -> nn.Module:
    """The trainable conv (``c2_msra_fill``, "same" padding) that maps student maps
    (N, in_channels, H, W) to the teacher's (N, out_channels, H, W).

    Args:
        what: who asks (named in the error).
        kernel_size: odd kernel size.
        always: the method's own adaptation layer, built even when the channels agree;
            otherwise the channels agreeing give ``nn.Identity``.

    Channels that differ need ``MODEL.DISTILL.ADAPT_CHANNELS`` (else a ValueError).
    """
    if in_channels != out_channels and not cfg.MODEL.DISTILL.ADAPT_CHANNELS:
        raise ValueError(
            f"{what}: student has {in_channels} channels, teacher {out_channels}; "
            "set MODEL.DISTILL.ADAPT_CHANNELS True or match FPN.OUT_CHANNELS"
        )
    if in_channels == out_channels and not always:
        return nn.Identity()
    if kernel_size % 2 != 1:
        raise ValueError(f"{what}: adapter kernel size must be odd, got {kernel_size}")
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2)
    weight_init.c2_msra_fill(conv)
    return conv


def level_adapters(
    cfg: CfgNode,
    what: str,
    levels: Iterable[str],
    student_shapes: Dict[str, ShapeSpec],
    teacher_shapes: Dict[str, ShapeSpec],
    kernel_size: int = 1,
    always: bool = False,
) -> nn.ModuleDict:
    """:func:`check_levels`, then one :func:`feature_adapter` per level, by level name."""
    levels = list(levels)
    check_levels(what, levels, student_shapes, teacher_shapes)
    return nn.ModuleDict(
        {
            f: feature_adapter(
                cfg, student_shapes[f].channels, teacher_shapes[f].channels, f"{what} {f}", kernel_size, always
            )
            for f in levels
        }
    )


def mse(student: torch.Tensor, teacher: torch.Tensor, what: str) -> torch.Tensor:
    """Mean squared difference over all elements (0, still in the graph, when empty)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} differs from teacher's {tuple(teacher.shape)}"
        )
    if student.numel() == 0:
        return student.sum() * 0.0
    return F.mse_loss(student, teacher, reduction="mean")

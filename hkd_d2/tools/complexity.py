"""Model size and compute: parameters (fvcore ``parameter_count``) and GMACs (fvcore
``FlopCountAnalysis``, which counts one fused multiply-add as one operation)."""
from typing import Sequence

import torch
from fvcore.nn import FlopCountAnalysis, parameter_count
from torch import nn

from ..modeling.distiller import DISTILL_ONLY_PREFIXES

__all__ = ["count_parameters", "backbone_gmacs", "module_gmacs"]


def count_parameters(model: nn.Module, exclude_prefixes: Sequence[str] = DISTILL_ONLY_PREFIXES) -> int:
    """Parameters of ``model``, leaving out modules under ``exclude_prefixes`` (distillation-only
    adapters by default, so a distiller counts as its deployed student)."""
    counts = parameter_count(model)
    excluded = sum(counts.get(prefix.rstrip("."), 0) for prefix in exclude_prefixes)
    return int(counts[""] - excluded)


@torch.no_grad()
def module_gmacs(module: nn.Module, *inputs: torch.Tensor) -> float:
    """GMACs of one eval-mode call ``module(*inputs)`` (its train/eval mode is restored after)."""
    was_training = module.training
    analysis = FlopCountAnalysis(module.eval(), inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    try:
        return analysis.total() / 1e9
    finally:
        module.train(was_training)


def backbone_gmacs(model: nn.Module, height: int, width: int) -> float:
    """GMACs of ``model.backbone`` (ResNet + FPN) on one (1, 3, height, width) input, padded
    (as the detector pads it) to a multiple of ``backbone.size_divisibility``, e.g. 608x800."""
    device = next(model.parameters()).device
    divisor = max(getattr(model.backbone, "size_divisibility", 1), 1)
    height, width = (-(-v // divisor) * divisor for v in (height, width))
    return module_gmacs(model.backbone, torch.zeros(1, 3, height, width, device=device))

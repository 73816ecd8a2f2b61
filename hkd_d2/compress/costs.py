"""What a student costs: parameters and GMACs (fvcore, as :mod:`hkd_d2.tools.complexity` counts
them) of every candidate at its stage's input size, and of the parts every student shares.

A student backbone is the stem, one candidate per stage and the FPN; with the fixed stage
interface its cost is exactly ``shared + sum of the chosen candidates' costs``.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from fvcore.nn import parameter_count
from torch import nn

from ..tools.complexity import backbone_gmacs, module_gmacs

__all__ = ["Cost", "backbone_cost", "candidate_cost", "padded_size", "stage_input_sizes"]


@dataclass(frozen=True)
class Cost:
    """Parameters (a count) and GMACs."""

    params: float
    gmacs: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.gmacs + other.gmacs)

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(self.params - other.params, self.gmacs - other.gmacs)


def padded_size(height: int, width: int, divisor: int) -> Tuple[int, int]:
    """(H, W) rounded up to multiples of ``divisor``, as the detector pads its input."""
    divisor = max(divisor, 1)
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def stage_input_sizes(maps: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """(H, W) of each stage's input, from the teacher's ``[stem, res2..res5]`` maps of one image."""
    return [tuple(int(v) for v in m.shape[-2:]) for m in maps[:-1]]


def candidate_cost(module: nn.Module, in_channels: int, size: Tuple[int, int]) -> Cost:
    """Parameters and GMACs of ``module`` on one (1, in_channels, H, W) input."""
    params = list(module.parameters())
    device = params[0].device if params else None
    return Cost(float(sum(p.numel() for p in params)), module_gmacs(module, torch.zeros(1, in_channels, *size, device=device)))


def backbone_cost(model: nn.Module, height: int, width: int) -> Cost:
    """Parameters of ``model.backbone`` and its GMACs at (height, width) (padded as the detector pads)."""
    return Cost(float(parameter_count(model.backbone)[""]), backbone_gmacs(model, height, width))

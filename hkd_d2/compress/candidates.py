"""The candidate student blocks of each teacher stage.

Every stage of the student has a fixed interface: it reads ``interface[k]`` channels (the
previous stage's output; the stem's for res2) and writes ``interface[k + 1]`` channels, so any
candidate of a stage can follow any candidate of the previous one and the costs add up. A
candidate is one :class:`~hkd_d2.modeling.backbone.compact.StageSpec`: a kind
(``COMPACT_BLOCK_REGISTRY``), a depth, and a width given as a multiple of the stage's output
interface (a bottleneck's inner width; its blocks output 4x that), then a 1x1 projection to the
interface.
"""
import itertools
from dataclasses import dataclass
from typing import List, Sequence

from torch import nn

from ..modeling.backbone import STAGE_NAMES, StageSpec, build_compact_stage, stage_stride

__all__ = ["Candidate", "CandidateSet", "build_candidate", "candidate_grid"]

# Block kinds whose shape depends on the expansion factor (the others get one candidate per width).
EXPANDING_KINDS = ("inverted_residual",)


@dataclass(frozen=True)
class CandidateSet:
    """What to try at every stage: block kinds, depths, width multipliers, expansion factors."""

    kinds: Sequence[str] = ("basic", "bottleneck", "inverted_residual", "separable")
    depths: Sequence[int] = (1, 2)
    widths: Sequence[float] = (0.5, 1.0)
    expansions: Sequence[float] = (6.0,)


@dataclass(frozen=True)
class Candidate:
    """One candidate of stage ``stage`` (``"res2"``..): its spec and its input channels and stride."""

    stage: str
    spec: StageSpec
    in_channels: int
    stride: int

    def label(self) -> str:
        return f"{self.stage} {self.spec.label()}"


def candidate_grid(interface: Sequence[int], options: CandidateSet) -> List[List[Candidate]]:
    """The candidates of each stage (res2..res5), every combination of ``options``.

    Args:
        interface: channels between the stages, ``[stem output, res2, res3, res4, res5]``.
    """
    if len(interface) != len(STAGE_NAMES) + 1:
        raise ValueError(f"interface needs {len(STAGE_NAMES) + 1} channel counts (stem, {', '.join(STAGE_NAMES)}), "
                         f"got {list(interface)}")
    grid = []
    for k, stage in enumerate(STAGE_NAMES):
        specs = []
        for kind, depth, width in itertools.product(options.kinds, options.depths, options.widths):
            expansions = options.expansions if kind in EXPANDING_KINDS else (1.0,)
            channels = max(1, round(width * interface[k + 1]))
            specs += [StageSpec(kind, int(depth), channels, float(t), interface[k + 1]) for t in expansions]
        grid.append([Candidate(stage, spec, interface[k], stage_stride(k)) for spec in dict.fromkeys(specs)])
    return grid


def build_candidate(candidate: Candidate, norm: str) -> nn.Sequential:
    """The candidate's blocks, named as in the compact backbone's stage (``0.conv1.weight``, ...).

    (N, in_channels, H, W) -> (N, interface out, H / stride, W / stride).
    """
    return nn.Sequential(*build_compact_stage(candidate.spec, candidate.in_channels, candidate.stride, norm))

"""Block-wise compression of the teacher's backbone under a resource budget (``hkd-compress``).

Our design after the abstract of Ahmed et al., "Compact CNN Structure Learning by Knowledge
Distillation" (ICPR 2020): each teacher stage (res2..res5) is a block; candidate student blocks
(:mod:`.candidates`) learn, all at once, to reproduce the teacher block's output from its input
(:mod:`.blockwise`, through the fixed stage interface of :mod:`.interface`); one candidate per
stage is chosen with the smallest summed block loss within a parameter and/or GMACs budget,
exactly (:mod:`.budget`); the chosen blocks are stitched with the teacher's stem, FPN and heads
into a compact student (:mod:`.stitch`) that the usual training (HKD or any term) fine-tunes.
"""
from .blockwise import Schedule, block_losses, train_blockwise
from .budget import Budget, InfeasibleBudgetError, Selection, select_blocks
from .candidates import Candidate, CandidateSet, build_candidate, candidate_grid
from .interface import StageInterface, fit_interface
from .pipeline import CompressOptions, run_compress
from .stitch import stitch_state_dict

__all__ = [
    "Budget",
    "Candidate",
    "CandidateSet",
    "CompressOptions",
    "InfeasibleBudgetError",
    "Schedule",
    "Selection",
    "StageInterface",
    "block_losses",
    "build_candidate",
    "candidate_grid",
    "fit_interface",
    "run_compress",
    "select_blocks",
    "stitch_state_dict",
    "train_blockwise",
]

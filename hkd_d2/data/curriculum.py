"""Curriculum sampling for instance-level sequence learning (ISL: Zhao, Sun, Dong, Dong, Li 2021,
"Knowledge Distillation via Instance-level Sequence Learning", arXiv 2106.10885).

The training images are ranked, easiest first, by the scores a snapshot of the student gives
them at each phase boundary (:class:`hkd_d2.engine.curriculum.CurriculumHook`); this sampler feeds
the easiest fraction of that ranking, growing linearly to every image:

    fraction(i) = 1                                                    before the first boundary,
    fraction(i) = min(1, START_FRACTION + (1 - START_FRACTION) * (i - b) / G)   after boundary b,

``G = GROWTH_ITERS`` (the phase length when 0), ``i`` the training iteration of the draw. Within
the pool the images come in random rounds, as Detectron2's ``TrainingSampler`` does with the whole
set: a permutation of the pool's ranks (its size read at the round's start), drawn again when it is
used up or when a new ranking arrives.

Selected with ``DATALOADER.SAMPLER_TRAIN "CurriculumSampler"`` (keys ``DATALOADER.CURRICULUM.*``);
:func:`build_curriculum_loader` gives the loader the :class:`Curriculum` the hook drives.

Distributed and loader workers: every process draws the same global stream from the same seed
and keeps its shard (elements ``rank::world``), as ``TrainingSampler``. The ranking and the
boundary live in shared-memory tensors that the hook rewrites (two rows, the one in use flipped
after the other is written), so loader workers read the new ranking without a restart; batches the
loader prepared before the hook's update keep the old one (at most its prefetch). The ranking is
checkpointed by the hook: a resumed training draws from it from its first iteration.
"""
import itertools
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch
from torch.utils.data.sampler import Sampler
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.utils import comm

__all__ = [
    "CURRICULUM_SAMPLER",
    "Curriculum",
    "CurriculumSampler",
    "build_curriculum_loader",
    "easiest_first",
    "phase_iters",
    "pool_fraction",
    "uses_curriculum",
]

# The DATALOADER.SAMPLER_TRAIN value that selects the curriculum sampler.
CURRICULUM_SAMPLER = "CurriculumSampler"
# Columns of the sampler's shared state tensor.
_ROW, _BOUNDARY, _START_ITER = 0, 1, 2


def uses_curriculum(cfg: CfgNode) -> bool:
    """Whether ``cfg`` trains with the curriculum sampler."""
    return cfg.DATALOADER.SAMPLER_TRAIN == CURRICULUM_SAMPLER


def phase_iters(cfg: CfgNode, num_images: int) -> int:
    """Iterations between rankings: ``DATALOADER.CURRICULUM.PHASE_ITERS``, or one epoch of
    ``num_images`` when it is 0."""
    return cfg.DATALOADER.CURRICULUM.PHASE_ITERS or max(1, math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH))


def pool_fraction(iteration: int, boundary: int, start_fraction: float, growth_iters: int) -> float:
    """The fraction of the ranking fed at ``iteration``: 1 before any boundary (``boundary < 0``),
    then ``start_fraction`` at ``boundary`` growing linearly to 1 over ``growth_iters``."""
    if boundary < 0:
        return 1.0
    done = max(0, iteration - boundary) / growth_iters
    return min(1.0, start_fraction + (1.0 - start_fraction) * done)


def easiest_first(scores: torch.Tensor) -> torch.Tensor:
    """(M,) int64 image indices by ascending score (ties by index; NaN scores last)."""
    scores = scores.double().clone()
    scores[torch.isnan(scores)] = math.inf
    return torch.sort(scores, stable=True).indices


class CurriculumSampler(Sampler):
    """An infinite stream of dataset indices drawn from the easiest fraction of a ranking (see the
    module docstring); this process's shard of it."""

    def __init__(
        self,
        size: int,
        images_per_iteration: int,
        start_fraction: float,
        growth_iters: int,
        seed: Optional[int] = None,
    ):
        """
        Args:
            size: number of training images.
            images_per_iteration: images of one iteration over all processes (SOLVER.IMS_PER_BATCH).
            start_fraction: fraction of the ranking fed right after a boundary, in (0, 1].
            growth_iters: iterations over which it grows to 1 (> 0).
            seed: of the random rounds, the same in every process (None: a shared random one).
        """
        if size <= 0:
            raise ValueError(f"CurriculumSampler: the training set is empty (size {size})")
        if not 0.0 < start_fraction <= 1.0:
            raise ValueError(f"DATALOADER.CURRICULUM.START_FRACTION must be in (0, 1], got {start_fraction}")
        if growth_iters <= 0:
            raise ValueError(f"CurriculumSampler: growth over {growth_iters} iterations; it must be > 0")
        self._size = size
        self._images_per_iteration = images_per_iteration
        self._start_fraction = start_fraction
        self._growth_iters = growth_iters
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        # Two rankings (the one in use is state[_ROW]); identity until the first boundary.
        self._orders = torch.arange(size).repeat(2, 1).share_memory_()
        # [row in use, boundary iteration (-1: none yet), iteration the stream starts at].
        self._state = torch.tensor([0, -1, 0], dtype=torch.int64).share_memory_()

    @property
    def order(self) -> torch.Tensor:
        """(size,) the ranking in use, easiest first."""
        return self._orders[int(self._state[_ROW])].clone()

    @property
    def boundary(self) -> int:
        """Iteration of the last ranking (-1: none yet)."""
        return int(self._state[_BOUNDARY])

    def set_start_iter(self, iteration: int) -> None:
        """The training iteration of the stream's first draw (a resumed training's)."""
        self._state[_START_ITER] = int(iteration)

    def set_order(self, order: torch.Tensor, boundary: int) -> None:
        """Use ranking ``order`` (size,) from iteration ``boundary`` on."""
        order = torch.as_tensor(order, dtype=torch.int64)
        if order.shape != (self._size,) or not torch.equal(order.sort().values, torch.arange(self._size)):
            raise ValueError(f"CurriculumSampler: a ranking must be a permutation of the {self._size} images")
        spare = 1 - int(self._state[_ROW])
        self._orders[spare] = order
        self._state[_BOUNDARY] = int(boundary)
        self._state[_ROW] = spare

    def pool_size(self, iteration: int) -> int:
        """Images of the ranking fed at ``iteration`` (at least 1)."""
        fraction = pool_fraction(iteration, self.boundary, self._start_fraction, self._growth_iters)
        return max(1, min(self._size, math.ceil(fraction * self._size)))

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        start = int(self._state[_START_ITER])
        g = torch.Generator()
        g.manual_seed(self._seed + start)
        position = 0
        while True:
            boundary = self.boundary
            ranks = torch.randperm(self.pool_size(start + position // self._images_per_iteration), generator=g)
            for rank in ranks.tolist():
                if self.boundary != boundary:  # a new ranking: a new round from its easiest images
                    break
                yield int(self._orders[int(self._state[_ROW]), rank])
                position += 1


@dataclass
class Curriculum:
    """What the scoring hook needs of the loader: the records it samples (index = the sampler's
    index) and the sampler."""

    records: List[Dict]
    sampler: CurriculumSampler


def build_curriculum_loader(cfg: CfgNode, mapper, dataset: List[Dict]):
    """Detectron2's training loader of ``dataset`` with a :class:`CurriculumSampler` from
    ``DATALOADER.CURRICULUM``; the loader's attribute ``curriculum`` is its :class:`Curriculum`."""
    c = cfg.DATALOADER.CURRICULUM
    sampler = CurriculumSampler(
        len(dataset),
        cfg.SOLVER.IMS_PER_BATCH,
        c.START_FRACTION,
        c.GROWTH_ITERS or phase_iters(cfg, len(dataset)),
        seed=cfg.SEED if cfg.SEED >= 0 else None,
    )
    loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)
    loader.curriculum = Curriculum(dataset, sampler)
    return loader

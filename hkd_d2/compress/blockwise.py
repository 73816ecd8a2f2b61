"""Block-wise training: every candidate learns to map its stage's input code to the teacher
stage's output code (MSE), all candidates of all stages at once on the same batches.

The candidates share no parameter and the loss is their sum, so one backward pass and one Adam
step train each of them exactly as if alone (Adam's update of a parameter depends only on its own
gradients). The block loss a candidate is chosen by is its relative error on held-out images:
``sum (y_hat - y)^2 / sum y^2`` over the stage's output codes, comparable across stages.
"""
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..tools.progress import format_duration

__all__ = ["Schedule", "train_blockwise", "block_losses"]

logger = logging.getLogger(__name__)

# Codes of one batch: [stem, res2, ..., res5], (N, S_k, H_k, W_k); stage k maps codes[k] -> codes[k + 1].
Codes = Sequence[torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """Adam with a cosine decay of the learning rate from ``lr`` to 0 over ``steps`` steps."""

    steps: int = 200
    lr: float = 1e-3
    log_period: int = 20


def _stage_losses(candidates: Sequence[Sequence[nn.Module]], codes: Codes) -> List[List[torch.Tensor]]:
    return [[F.mse_loss(c(codes[k]), codes[k + 1]) for c in stage] for k, stage in enumerate(candidates)]


def train_blockwise(candidates: Sequence[Sequence[nn.Module]], batches: Iterator[Codes], schedule: Schedule,
                    labels: Sequence[Sequence[str]] = ()) -> List[List[float]]:
    """Train ``candidates`` (per stage, per candidate) for ``schedule.steps`` batches of codes.

    Logs, every ``log_period`` steps, each stage's best and worst running loss and the time left.
    Returns the last training MSE of each candidate.
    """
    modules = nn.ModuleList(nn.ModuleList(stage) for stage in candidates).train()
    if schedule.steps < 1:
        raise ValueError(f"Block-wise training needs at least one step, got {schedule.steps} (--steps)")
    optimizer = torch.optim.Adam(modules.parameters(), lr=schedule.lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, schedule.steps)
    start, last = time.perf_counter(), []
    for step in range(1, schedule.steps + 1):
        losses = _stage_losses(candidates, next(batches))
        optimizer.zero_grad(set_to_none=True)
        # A candidate whose loss is not finite stops learning (its own gradients only); it is
        # reported and never chosen.
        finite = [loss for stage in losses for loss in stage if torch.isfinite(loss)]
        if finite:
            torch.stack(finite).sum().backward()
        optimizer.step()
        decay.step()
        last = [[float(loss.detach()) for loss in stage] for stage in losses]
        if step % schedule.log_period == 0 or step == schedule.steps:
            _log_progress(step, schedule.steps, time.perf_counter() - start, last, labels)
    return last


def _log_progress(step: int, steps: int, elapsed: float, losses: List[List[float]], labels) -> None:
    parts = []
    for k, stage in enumerate(losses):
        best = min(range(len(stage)), key=lambda i: stage[i] if math.isfinite(stage[i]) else math.inf)
        name = f" ({labels[k][best]})" if labels else ""
        parts.append(f"stage {k}: best {stage[best]:.4g}{name}, worst {max(stage):.4g}")
    left = elapsed / step * (steps - step)
    logger.info(f"block-wise step {step}/{steps}, {format_duration(elapsed)} elapsed, "
                f"{format_duration(left)} left; " + "; ".join(parts))


@torch.no_grad()
def block_losses(candidates: Sequence[Sequence[nn.Module]], batches: Iterable[Codes]) -> List[List[float]]:
    """Relative squared error of every candidate over ``batches`` (eval mode): per stage, per candidate."""
    for stage in candidates:
        for c in stage:
            c.eval()
    errors = [[0.0] * len(stage) for stage in candidates]
    energy = [0.0] * len(candidates)
    for codes in batches:
        for k, stage in enumerate(candidates):
            target = codes[k + 1]
            energy[k] += float(target.double().pow(2).sum())
            for i, c in enumerate(stage):
                errors[k][i] += float((c(codes[k]) - target).double().pow(2).sum())
    if not all(e > 0 for e in energy):
        raise ValueError("The held-out teacher maps are all zero: no block loss can be measured (--eval-images)")
    return [[e / energy[k] if math.isfinite(e) else math.inf for e in stage] for k, stage in enumerate(errors)]


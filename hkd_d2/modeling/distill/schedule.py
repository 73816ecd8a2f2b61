"""One schedule for every distillation term: warm-up, start iteration and attenuation.

The factor on a term's loss ``name`` at iteration ``i`` is

    0                                              if i < start_iter,
    min(1, (i - start_iter) / warmup_iters)        (1 when warmup_iters is 0)
      * (max(0, 1 - i / max_iter) if name is attenuated, else 1)   otherwise.

:class:`hkd_d2.engine.DistillationHook` tells the meta-architecture the iteration; outside a
trainer (iteration ``None``) every factor is 1. The distiller is the one place that computes them;
the factors it applied are in its ``last_losses.scales``, and the metrics show those.
"""
from dataclasses import dataclass
from typing import FrozenSet, Optional

__all__ = ["DistillSchedule", "linear_warmup"]


def linear_warmup(iteration: int, warmup_iters: int) -> float:
    """Scale ``min(1, iteration / warmup_iters)``; 1 throughout when ``warmup_iters`` is 0."""
    if warmup_iters <= 0:
        return 1.0
    return min(1.0, iteration / warmup_iters)


@dataclass(frozen=True)
class DistillSchedule:
    """The loss factors of one term over training (see the module docstring)."""

    # Iterations over which the factor ramps from 0 to 1, counted from start_iter (0 = none).
    warmup_iters: int = 0
    # Iteration from which the term is on (0 = from the start).
    start_iter: int = 0
    # SOLVER.MAX_ITER, where attenuated losses reach 0.
    max_iter: int = 0
    # Names of the losses that decay linearly to 0 at max_iter.
    attenuated: FrozenSet[str] = frozenset()

    def scale(self, iteration: Optional[int]) -> float:
        """The start gate times the warm-up ramp at ``iteration`` (1 when it is None)."""
        if iteration is None:
            return 1.0
        if iteration < self.start_iter:
            return 0.0
        return linear_warmup(iteration - self.start_iter, self.warmup_iters)

    def loss_scale(self, name: str, iteration: Optional[int]) -> float:
        """:meth:`scale` times the attenuation of loss ``name`` at ``iteration``."""
        scale = self.scale(iteration)
        if iteration is None or name not in self.attenuated:
            return scale
        return scale * max(0.0, 1.0 - iteration / self.max_iter)

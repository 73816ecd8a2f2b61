"""Choosing one candidate per stage: the smallest summed block loss within a resource budget.

The exact search is a dynamic programme over the stages that keeps, after each stage, the
partial choices no other partial choice dominates (lower or equal loss and cost on every
constrained resource, one of them strictly lower); a partial choice that already exceeds the
budget, even when completed with the cheapest candidates of the remaining stages, is dropped. Costs
are kept as exact sums (no discretisation), so the result is the brute-force optimum.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Budget", "Selection", "InfeasibleBudgetError", "parse_budgets", "select_blocks"]

# Resources a budget can bound, in the order of the cost arrays.
RESOURCES = ("params", "gmacs")


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the student backbone (None = unbounded): parameters in millions, GMACs."""

    max_params_m: Optional[float] = None
    max_gmacs: Optional[float] = None

    def limits(self) -> Tuple[float, float]:
        """(parameters, GMACs) bounds, inf where unbounded."""
        return (np.inf if self.max_params_m is None else self.max_params_m * 1e6,
                np.inf if self.max_gmacs is None else self.max_gmacs)

    def label(self) -> str:
        """Folder-safe name, e.g. ``"gmacs2.5"``, ``"params4M"``, ``"gmacs2.5_params4M"``."""
        parts = ([f"gmacs{self.max_gmacs:.4g}"] if self.max_gmacs is not None else []) + \
                ([f"params{self.max_params_m:.4g}M"] if self.max_params_m is not None else [])
        return "_".join(parts) or "unbounded"


@dataclass(frozen=True)
class Selection:
    """The chosen candidate index of each stage, the summed loss and the total cost (fixed part included)."""

    indices: Tuple[int, ...]
    loss: float
    params: float
    gmacs: float


class InfeasibleBudgetError(ValueError):
    """No choice of candidates fits the budget."""


def _bound(text: Optional[str], teacher: float, what: str) -> Optional[float]:
    """``"2.5"`` -> 2.5; ``"0.5x"`` -> half of ``teacher``; None stays None."""
    if text is None:
        return None
    try:
        value = float(text[:-1]) * teacher if text.lower().endswith("x") else float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is neither a number nor a fraction of the teacher such as 0.5x") from None
    if not value > 0:
        raise ValueError(f"{what} {text!r} must be positive")
    return value


def _pick(values: Sequence[str], index: int) -> Optional[str]:
    """The ``index``-th value, the only one, or None."""
    if not values:
        return None
    return values[index] if len(values) > 1 else values[0]


def parse_budgets(max_gmacs: Sequence[str], max_params_m: Sequence[str], teacher_gmacs: float,
                  teacher_params_m: float) -> List[Budget]:
    """Budgets from the command line: the i-th GMACs bound with the i-th parameter bound (a single
    value, or none, goes with every budget). A value ending in ``x`` is a fraction of the teacher's
    backbone (``0.5x``)."""
    count = max(len(max_gmacs), len(max_params_m))
    for name, values in (("--max-gmacs", max_gmacs), ("--max-params", max_params_m)):
        if len(values) not in (0, 1, count):
            raise ValueError(f"{name} has {len(values)} values: give one, or as many as the other bound ({count})")
    budgets = [Budget(_bound(_pick(max_params_m, i), teacher_params_m, "--max-params"),
                      _bound(_pick(max_gmacs, i), teacher_gmacs, "--max-gmacs")) for i in range(count)]
    labels = [b.label() for b in budgets]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Budgets repeat: {labels}")
    return budgets


def _dominance_filter(loss: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Indices of the points that no other point dominates (ties: the first in loss, cost order).

    ``loss`` (P,), ``costs`` (P, R): lower is better in every column.
    """
    order = np.lexsort((*costs.T[::-1], loss))
    kept: List[int] = []
    kept_costs = np.empty_like(costs)
    for i in order:
        if kept and np.any(np.all(kept_costs[:len(kept)] <= costs[i], axis=1)):
            continue
        kept_costs[len(kept)] = costs[i]
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def select_blocks(
    losses: Sequence[Sequence[float]],
    params: Sequence[Sequence[float]],
    gmacs: Sequence[Sequence[float]],
    budget: Budget,
    fixed: Tuple[float, float] = (0.0, 0.0),
) -> Selection:
    """The choice of one candidate per stage with the smallest summed loss within ``budget``.

    Args:
        losses, params, gmacs: per stage, per candidate: block loss, parameters, GMACs.
        budget: bounds on the totals.
        fixed: (parameters, GMACs) of the parts every choice shares (stem, FPN), added to the totals.

    Raises:
        InfeasibleBudgetError: naming the cheapest totals reachable, when nothing fits.
    """
    limits = np.asarray(budget.limits())
    bounded = np.isfinite(limits)
    stage_costs = [np.stack([np.asarray(p, dtype=np.float64), np.asarray(g, dtype=np.float64)], axis=1)
                   for p, g in zip(params, gmacs)]
    cheapest_rest = np.cumsum([c.min(axis=0) for c in stage_costs][::-1], axis=0)[::-1]
    # Partial choices: summed loss (P,), summed cost (P, 2), chosen indices (P, stages so far).
    loss, cost = np.zeros(1), np.asarray([fixed], dtype=np.float64)
    chosen = np.zeros((1, 0), dtype=np.int64)
    for stage, (stage_loss, costs) in enumerate(zip(losses, stage_costs)):
        stage_loss = np.asarray(stage_loss, dtype=np.float64)
        loss = (loss[:, None] + stage_loss[None, :]).reshape(-1)
        cost = (cost[:, None, :] + costs[None, :, :]).reshape(-1, 2)
        chosen = np.concatenate([np.repeat(chosen, len(stage_loss), axis=0),
                                 np.tile(np.arange(len(stage_loss)), len(chosen))[:, None]], axis=1)
        if stage + 1 < len(stage_costs):
            # Pruning only: a hair of slack keeps summation-order rounding from dropping a choice
            # that lands exactly on the budget; the last stage compares exactly.
            fits = np.all(cost + cheapest_rest[stage + 1] <= limits * (1 + 1e-12), axis=1)
        else:
            fits = np.all(cost <= limits, axis=1)
        fits &= np.isfinite(loss)
        loss, cost, chosen = loss[fits], cost[fits], chosen[fits]
        if len(loss) == 0:
            cheapest = tuple(float(v) for v in np.asarray(fixed) + cheapest_rest[0])
            raise InfeasibleBudgetError(
                f"No student fits the budget {budget.label()}: the cheapest candidates total "
                f"{cheapest[0] / 1e6:.3f} M parameters and {cheapest[1]:.3f} GMACs (stem and FPN included); "
                "raise the budget or add smaller candidates (--widths, --depths, --kinds)")
        keep = _dominance_filter(loss, cost[:, bounded])
        loss, cost, chosen = loss[keep], cost[keep], chosen[keep]
    best = int(np.lexsort((cost[:, 1], cost[:, 0], loss))[0])
    return Selection(tuple(int(i) for i in chosen[best]), float(loss[best]), float(cost[best, 0]), float(cost[best, 1]))

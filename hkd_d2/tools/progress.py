"""Stage banners with elapsed time, remaining budget and an overall ETA for multi-stage tools."""
import logging
import time
from typing import Callable, Dict, Optional

__all__ = ["StageClock", "format_duration"]

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``"1h02m03s"`` / ``"2m03s"`` / ``"3s"``; negative durations get a leading minus."""
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{sign}{h}h{m:02d}m{s:02d}s"
    return f"{sign}{m}m{s:02d}s" if m else f"{sign}{s}s"


class StageClock:
    """Announces each stage of a planned run and keeps an overall estimate of the end.

    The plan gives each stage a duration estimate (seconds). The ETA of the remaining stages is
    their planned time scaled by how fast the finished stages went against their plan; the
    ratio starts from 1 as if ``prior_s`` planned seconds had gone exactly to plan, so short
    early stages do not swing it.
    """

    def __init__(self, plan: Dict[str, float], budget_s: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic, prior_s: float = 60.0):
        self.plan = dict(plan)
        self.budget_s = budget_s
        self.prior_s = prior_s
        self._clock = clock
        self._start = clock()
        self._done: Dict[str, float] = {}
        self._current: Optional[str] = None
        self._current_start = self._start

    def elapsed(self) -> float:
        return self._clock() - self._start

    def eta(self) -> float:
        """Estimated seconds until every planned stage has finished."""
        planned_done = sum(self.plan[s] for s in self._done) + self.prior_s
        speed = (sum(self._done.values()) + self.prior_s) / planned_done if planned_done > 0 else 1.0
        remaining = [s for s in self.plan if s not in self._done]
        eta = speed * sum(self.plan[s] for s in remaining)
        if self._current is not None:
            eta = max(eta - (self._clock() - self._current_start), 0.0)
        return eta

    def start(self, stage: str) -> None:
        """Close the running stage (if any) and print the banner of ``stage`` (a key of the plan)."""
        if stage not in self.plan:
            raise KeyError(f"stage {stage!r} is not in the plan {list(self.plan)}")
        self.finish()
        self._current, self._current_start = stage, self._clock()
        logger.info(self.banner(stage))

    def finish(self) -> None:
        if self._current is not None:
            self._done[self._current] = self._clock() - self._current_start
            logger.info(f"[{self._current}] done in {format_duration(self._done[self._current])}")
            self._current = None

    def banner(self, stage: str) -> str:
        index = list(self.plan).index(stage) + 1
        parts = [
            f"==== stage {index}/{len(self.plan)}: {stage} (planned {format_duration(self.plan[stage])})",
            f"elapsed {format_duration(self.elapsed())}",
            f"overall ETA {format_duration(self.eta())}",
        ]
        if self.budget_s is not None:
            parts.append(f"budget left {format_duration(self.budget_s - self.elapsed())}")
        return " | ".join(parts) + " ===="

    def durations(self) -> Dict[str, float]:
        """Seconds spent in each finished stage."""
        return dict(self._done)

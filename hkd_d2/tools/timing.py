"""Wall-clock timing of a callable: median and spread over repeated runs."""
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = ["TimingStats", "time_call", "time_interleaved"]


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings, in seconds."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    repeats: int

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> "TimingStats":
        if len(samples) == 0:
            raise ValueError("TimingStats needs at least one timing sample")
        s = np.asarray(samples, dtype=np.float64)
        q1, median, q3 = np.percentile(s, [25, 50, 75])
        return cls(float(median), float(q1), float(q3), float(s.min()), float(s.max()), len(s))

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)

    def format_ms(self) -> str:
        """``"123.4 ms [IQR 120.1-130.2]"``."""
        return f"{1e3 * self.median:.1f} ms [IQR {1e3 * self.q1:.1f}-{1e3 * self.q3:.1f}]"


def _synchronize(device: Optional[torch.device]) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: Optional[torch.device]) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")


def time_call(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: Optional[torch.device] = None
) -> TimingStats:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (CUDA synchronised)."""
    _check_repeats(repeats)
    for _ in range(warmup):
        fn()
    return TimingStats.from_samples([_timed(fn, device) for _ in range(repeats)])


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
    device: Optional[torch.device] = None,
) -> Dict[str, TimingStats]:
    """Time several callables in turn: ``warmup`` untimed rounds, then ``repeats`` timed rounds,
    each round calling every ``fn`` once in order. A change of machine load during the run then
    falls on every ``fn`` alike instead of on whichever ran at the time. CUDA synchronised."""
    _check_repeats(repeats)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_timed(fn, device))
    return {name: TimingStats.from_samples(s) for name, s in samples.items()}

"""Wall-clock timing of a callable: median and spread over repeated runs."""
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

__all__ = ["TimingStats", "time_call"]


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


def time_call(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: Optional[torch.device] = None
) -> TimingStats:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (CUDA synchronised)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        samples.append(time.perf_counter() - start)
    return TimingStats.from_samples(samples)

"""Miss rate against false positives per image, on log-log axes, as in Dollar et al. (PAMI 2012).

Several detectors (or setups) share one figure; the legend gives each curve's log-average miss
rate and is sorted best first, the way the Caltech benchmark plots are.
"""
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_output
from .miss_rate.matching import MissRateCurve, log_average_miss_rate
from .miss_rate.protocols import TOOLBOX_FPPI_REFS

__all__ = ["plot_mr_fppi", "MISS_RATE_TICKS"]

# The Caltech plots' y ticks (miss rate).
MISS_RATE_TICKS = (0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.64, 0.80, 1.0)

CurveLike = Union[MissRateCurve, Tuple[Sequence[float], Sequence[float]]]


def _as_curve(curve: CurveLike) -> MissRateCurve:
    """A (fppi, miss_rate) pair becomes a MissRateCurve with its MR over the toolbox's points."""
    if hasattr(curve, "log_average"):
        return curve
    fppi, miss = (np.asarray(v, dtype=np.float64) for v in curve)
    if fppi.shape != miss.shape or fppi.ndim != 1:
        raise ValueError(f"fppi and miss_rate must be 1-D arrays of one length, got {fppi.shape}, {miss.shape}")
    mr, at_refs = log_average_miss_rate(fppi, 1.0 - miss, TOOLBOX_FPPI_REFS)
    return MissRateCurve(fppi, miss, at_refs, mr, TOOLBOX_FPPI_REFS)


def plot_mr_fppi(
    curves: Mapping[str, CurveLike],
    path: Union[str, Path],
    title: Optional[str] = None,
    fppi_range: Tuple[float, float] = (1e-3, 1e1),
    miss_rate_range: Tuple[float, float] = (0.05, 1.0),
    dpi: int = 120,
) -> Path:
    """Draw MR-FPPI curves of several detectors in one figure and write it to ``path``.

    Args:
        curves: {label: MissRateCurve or (fppi (K,), miss_rate (K,))}; a curve without any
            counted detection (K = 0) is drawn as a flat line at miss rate 1.
        path: image file to write (format from the suffix, e.g. .png / .pdf); written atomically.
        title: figure title.
        fppi_range: x-axis limits, (1e-3, 1e1) as the Caltech plots or (1e-2, 1e0).
        miss_rate_range: y-axis limits.

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    path = Path(path)
    entries = sorted(((label, _as_curve(c)) for label, c in curves.items()),
                     key=lambda e: (np.nan_to_num(e[1].log_average, nan=np.inf), e[0]))
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    try:
        for label, curve in entries:
            x = np.concatenate(([fppi_range[0]], np.maximum(curve.fppi, fppi_range[0]), [fppi_range[1]]))
            y = np.concatenate(([1.0], curve.miss_rate, [curve.miss_rate[-1] if len(curve.miss_rate) else 1.0]))
            ax.plot(x, np.clip(y, miss_rate_range[0], 1.0), drawstyle="steps-post", linewidth=2,
                    label=f"{100 * curve.log_average:.2f}% {label}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(*fppi_range)
        ax.set_ylim(*miss_rate_range)
        ax.yaxis.set_major_locator(FixedLocator(MISS_RATE_TICKS))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticklabels([f"{t:.2f}".lstrip("0") if t < 1 else "1" for t in MISS_RATE_TICKS])
        ax.set_xlabel("false positives per image")
        ax.set_ylabel("miss rate")
        ax.grid(True, which="major", linestyle=":", linewidth=0.8)
        if title:
            ax.set_title(title)
        ax.legend(loc="lower left", fontsize=9, framealpha=0.9)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or None)
    finally:
        plt.close(fig)
    return path

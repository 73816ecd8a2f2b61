"""Result tables (markdown via tabulate), statistics over seeds, and atomic JSON/text/figure output."""
import contextlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Sequence, Tuple, Union

import numpy as np
from tabulate import tabulate

from ..atomic import atomic_output

__all__ = ["markdown_table", "mean_and_spread", "format_mean_spread", "gap_closed", "write_json", "write_text",
           "saved_figure"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".2f") -> str:
    """A GitHub-markdown (pipe) table."""
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=floatfmt, disable_numparse=True)


def mean_and_spread(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count of finite ``values``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def format_mean_spread(stats: Mapping[str, float], digits: int = 2) -> str:
    """``"12.34 ± 0.56"`` (``± std`` left out for a single value; ``"n/a"`` without any)."""
    if stats["n"] == 0:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if stats["n"] > 1 else "")


def gap_closed(teacher: float, student: float, distilled: float) -> float:
    """Fraction of the teacher-student gap (lower is better) that distillation closed:
    ``(student - distilled) / (student - teacher)``; NaN when the teacher is not better."""
    gap = student - teacher
    return (student - distilled) / gap if gap > 0 else math.nan


def write_text(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


@contextlib.contextmanager
def saved_figure(path: Union[str, Path], ncols: int = 1, figsize: Tuple[float, float] = (6.5, 4.5),
                 title: str = "", dpi: int = 120) -> Iterator[Any]:
    """Yield the axes of a new matplotlib figure (one, or an array of ``ncols``), then lay it out and
    save it to ``path`` atomically (a failure leaves no file); the figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield axes
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with atomic_output(Path(path)) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or None)
    finally:
        plt.close(fig)


def write_json(path: Union[str, Path], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; NaN is written as null."""
    return write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj

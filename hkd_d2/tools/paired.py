"""Paired comparisons over seeds: is one configuration better than another by more than the noise?

Two runs with the same seed share their initialisation and their data order, so the per-seed
difference removes that part of the spread. For MR (lower is better) the *gain* of a candidate
over a reference on seed ``s`` is ``MR_reference(s) - MR_candidate(s)``: positive = the candidate
is better. Over ``n`` seeds we report the mean gain with a two-sided Student-t interval
(``mean ± t_{(1+c)/2, n-1} * sd / sqrt(n)``, sample sd), and wins / losses / ties. The verdict is
"better" / "worse" only when the whole interval lies above / below 0, else "within noise".
"""
import math
from typing import Dict, List, Mapping

import numpy as np
from scipy import stats

__all__ = ["DEFAULT_CONFIDENCE", "paired_gain", "format_paired", "verdict"]

# Confidence of the reported intervals.
DEFAULT_CONFIDENCE = 0.95


def paired_gain(reference: Mapping[int, float], candidate: Mapping[int, float],
                confidence: float = DEFAULT_CONFIDENCE) -> Dict:
    """Paired gain of ``candidate`` over ``reference`` on the seeds both have.

    Args:
        reference, candidate: {seed: MR} (lower is better); seeds present in only one are left out.
        confidence: coverage of the t interval.

    Returns:
        ``{"n", "per_seed": [{"seed", "reference", "candidate", "gain"}], "mean", "sd", "ci_low", "ci_high",
        "confidence", "interval": "t", "wins", "losses", "ties", "verdict"}``; the interval is NaN for fewer
        than 2 seeds.
    """
    seeds = sorted(set(reference) & set(candidate))
    per_seed: List[Dict] = [
        {"seed": s, "reference": float(reference[s]), "candidate": float(candidate[s]),
         "gain": float(reference[s]) - float(candidate[s])}
        for s in seeds
    ]
    gains = np.asarray([p["gain"] for p in per_seed], dtype=np.float64)
    n = int(gains.size)
    mean = float(gains.mean()) if n else math.nan
    sd = float(gains.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    result = {
        "n": n, "per_seed": per_seed, "mean": mean, "sd": sd,
        "ci_low": mean - half, "ci_high": mean + half, "confidence": confidence, "interval": "t",
        "wins": int((gains > 0).sum()), "losses": int((gains < 0).sum()), "ties": int((gains == 0).sum()),
    }
    result["verdict"] = verdict(result)
    return result


def verdict(gain: Mapping) -> str:
    """"better" / "worse" when the interval excludes 0, else "within noise" (also for < 2 seeds)."""
    if not (math.isfinite(gain["ci_low"]) and math.isfinite(gain["ci_high"])):
        return "within noise"
    if gain["ci_low"] > 0:
        return "better"
    if gain["ci_high"] < 0:
        return "worse"
    return "within noise"


def format_paired(gain: Mapping, digits: int = 2) -> str:
    """``"+4.20 [+1.10, +7.30] 4W/1L"`` (mean gain, interval, wins/losses); ``"n/a"`` without seeds."""
    if gain["n"] == 0:
        return "n/a"
    text = f"{gain['mean']:+.{digits}f}"
    if math.isfinite(gain["ci_low"]):
        text += f" [{gain['ci_low']:+.{digits}f}, {gain['ci_high']:+.{digits}f}]"
    return text + f" {gain['wins']}W/{gain['losses']}L"

"""Miss-rate protocols as data: setups (height / visibility ranges) and per-benchmark rules.

One :class:`Protocol` per benchmark holds everything that differs between them (reference FPPI
points, overlap threshold, detection height filter, box standardisation, border, kept labels,
visibility convention); the matching core (:mod:`.matching`) has no benchmark-specific branches.
"""
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "INF",
    "MIN_MISS_RATE",
    "TOOLBOX_FPPI_REFS",
    "CITYPERSONS_FPPI_REFS",
    "Setup",
    "Protocol",
    "PROTOCOLS",
    "get_protocol",
]

INF = math.inf
# Clamp of the miss rate before the log, as dbEval.m does (max(1e-10, 1 - recall)).
MIN_MISS_RATE = 1e-10
# The reference FPPI points of dbEval.m: 10.^(-2:.25:0).
TOOLBOX_FPPI_REFS = tuple(10.0 ** np.arange(-2.0, 0.001, 0.25))
# eval_MR_multisetup.py writes the same points rounded to 4 decimals (identical results unless
# a data set has several thousand images).
CITYPERSONS_FPPI_REFS = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000)


@dataclass(frozen=True)
class Setup:
    """One evaluation setup: inclusive ranges of ground-truth height (px) and visibility."""

    height_range: Tuple[float, float]
    vis_range: Tuple[float, float] = (-INF, INF)


@dataclass(frozen=True)
class Protocol:
    """Everything that differs between benchmarks (data, not code paths)."""

    name: str
    setups: Mapping[str, Setup]
    default_setups: Tuple[str, ...]
    fppi_refs: Tuple[float, ...] = TOOLBOX_FPPI_REFS
    # Detection/ground-truth overlap needed for a match.
    iou_threshold: float = 0.5
    # Detections are kept when their height lies in [hmin / expand, hmax * expand).
    expand_filter: float = 1.25
    # Top-scoring detections kept per image (None = all).
    max_dets: Optional[int] = None
    # Width/height ratio that non-ignored gt and detections are standardised to (None = keep).
    aspect_ratio: Optional[float] = None
    # Ground truth not inside [x0, y0, x1, y1] becomes ignore (None = no border).
    border: Optional[Tuple[float, float, float, float]] = None
    # Source labels kept as pedestrians / as ignore regions; other labels are removed.
    # Both empty = use the records' own ignore flags and keep every box.
    labels: Tuple[str, ...] = ()
    ignore_labels: Tuple[str, ...] = ()
    # Visibility given to fully visible boxes (dbEval's "inf" convention), None = keep as is.
    unoccluded_vis: Optional[float] = None
    # Only ground truth / detections of this COCO category are scored (None = all).
    category_id: Optional[int] = None


CITYPERSONS = Protocol(
    name="citypersons",
    setups={
        "Reasonable": Setup((50, INF), (0.65, INF)),
        "Reasonable_small": Setup((50, 75), (0.65, INF)),
        "Reasonable_occ=heavy": Setup((50, INF), (0.2, 0.65)),
        "All": Setup((20, INF), (0.2, INF)),
        "bare": Setup((50, INF), (0.9, INF)),
        "partial": Setup((50, INF), (0.65, 0.9)),
        "heavy": Setup((50, INF), (0.0, 0.65)),
        "small": Setup((50, 75), (0.65, INF)),
        "middle": Setup((75, 100), (0.65, INF)),
        "large": Setup((100, INF), (0.65, INF)),
    },
    default_setups=("Reasonable", "Reasonable_small", "Reasonable_occ=heavy", "All"),
    fppi_refs=CITYPERSONS_FPPI_REFS,
    max_dets=1000,
    category_id=1,
)

CALTECH = Protocol(
    name="caltech",
    setups={
        "Reasonable": Setup((50, INF), (0.65, INF)),
        "All": Setup((20, INF), (0.2, INF)),
        "Scale=large": Setup((100, INF), (INF, INF)),
        "Scale=near": Setup((80, INF), (INF, INF)),
        "Scale=medium": Setup((30, 80), (INF, INF)),
        "Scale=far": Setup((20, 30), (INF, INF)),
        "Occ=none": Setup((50, INF), (INF, INF)),
        "Occ=partial": Setup((50, INF), (0.65, 1)),
        "Occ=heavy": Setup((50, INF), (0.2, 0.65)),
    },
    default_setups=(
        "Reasonable", "All", "Scale=near", "Scale=medium", "Scale=far",
        "Occ=none", "Occ=partial", "Occ=heavy",
    ),
    aspect_ratio=0.41,
    border=(5, 5, 635, 475),
    labels=("person",),
    ignore_labels=("people",),
    unoccluded_vis=INF,
)

PROTOCOLS: Dict[str, Protocol] = {p.name: p for p in (CITYPERSONS, CALTECH)}


def get_protocol(protocol: Union[str, Protocol]) -> Protocol:
    """Return the :class:`Protocol` named ``protocol`` (or ``protocol`` itself)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise KeyError(f"Unknown miss-rate protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


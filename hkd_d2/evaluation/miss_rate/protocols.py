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
    "PERSON_CATEGORY_NAMES",
]

# Category names that are pedestrians when nobody names others (data readers keep them, the
# evaluator accepts one-class data sets of these names).
PERSON_CATEGORY_NAMES = ("person", "pedestrian")

INF = math.inf
# Clamp of a zero miss rate before the log: the toolbox's acfTest.m (``max(1e-10, 1 - recall)``),
# also the ECP script; dbEval.m takes ``exp(mean(log(score)))`` unclamped (MR 0 where a miss rate
# reaches 0).
MIN_MISS_RATE = 1e-10
# The reference FPPI points of dbEval.m: 10.^(-2:.25:0) (also ECP's 10 ** linspace(-2, 0, 9)).
TOOLBOX_FPPI_REFS = tuple(10.0 ** np.arange(-2.0, 0.001, 0.25))
# eval_MR_multisetup.py writes the same points rounded to 4 decimals (identical results unless
# a data set has several thousand images).
CITYPERSONS_FPPI_REFS = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000)
# ECP's ParamsFactory clips every box's corners to the 1920x1024 frame of its images.
ECP_IMAGE_WINDOW = (0.0, 0.0, 1920.0, 1024.0)


@dataclass(frozen=True)
class Setup:
    """One evaluation setup; ground truth outside any range becomes ignore.

    Attributes:
        height_range: ground-truth height (px); the top is inclusive or not per protocol
            (:attr:`Protocol.height_top_inclusive`).
        vis_range: visible fraction, inclusive at both ends.
        occlusion_range, truncation_range: occlusion / truncation level in percent (ECP's
            ``occluded>N`` / ``truncated>N`` tags), half-open ``[lo, hi)``.
    """

    height_range: Tuple[float, float]
    vis_range: Tuple[float, float] = (-INF, INF)
    occlusion_range: Tuple[float, float] = (-INF, INF)
    truncation_range: Tuple[float, float] = (-INF, INF)


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
    # The lower end of that range is inclusive (toolbox) or exclusive (ECP: "height <= min / r").
    det_min_height_inclusive: bool = True
    # A ground-truth height equal to the top of a setup's range is inside it (CityPersons, ECP)
    # or not (dbEval.m filterGtFun: h < hr(2)).
    height_top_inclusive: bool = True
    # Top-scoring detections kept per image (None = all).
    max_dets: Optional[int] = None
    # Width/height ratio that non-ignored gt and detections are standardised to (None = keep).
    aspect_ratio: Optional[float] = None
    # Ground truth not inside [x0, y0, x1, y1] becomes ignore (None = no border).
    border: Optional[Tuple[float, float, float, float]] = None
    # The corners of ground truth and detections are clipped to [x0, y0, x1, y1] before anything
    # (each on its own, a box outside keeps x1 < x0; heights are y1 - y0 after it; None = not).
    clip_window: Optional[Tuple[float, float, float, float]] = None
    # How the overlap of a detection and a ground-truth box is computed (a key of
    # matching.PAIR_OVERLAPS): "toolbox" = from [x y w h] as bbGt.compOas / the CityPersons
    # script; "ecp" = from the corners as the ECP script's CompareRectangles / iou_ecp.
    overlap: str = "toolbox"
    # Source labels kept as pedestrians / as ignore regions; other labels are removed.
    # Both empty = use the records' own ignore flags and keep every box.
    labels: Tuple[str, ...] = ()
    ignore_labels: Tuple[str, ...] = ()
    # Labels whose ignored boxes are regions, overlapped as intersection over detection area;
    # other ignored boxes are overlapped by IoU (ECP's tolerated classes). None = every ignored
    # box is a region (toolbox).
    ioa_ignore_labels: Optional[Tuple[str, ...]] = None
    # How the visible fraction of a box is read (a key of inputs.VISIBILITY_RULES): "ratio" =
    # the record's vis_ratio; "dbeval" = dbEval.m's filterGtFun (inf when no visible box was
    # annotated, else visible area / full area, so posv == pos gives 1).
    visibility: str = "ratio"
    # Miss rates are clamped to this before the log (0 = no clamp, dbEval.m).
    min_miss_rate: float = MIN_MISS_RATE
    # MR of a setup with no positives and no counted detections (dbEval.m: compRoc returns
    # zeros for an empty detection list, so 1.0; NaN = undefined).
    empty_setup_miss_rate: float = math.nan
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

# dbEval.m: exps table, loadGt (labels person / person? / people / ignore, the last three as
# ignore), filterGtFun (h >= hr(1) & h < hr(2), vf >= vr(1) & vf <= vr(2), bnds), bbGt compRoc.
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
    height_top_inclusive=False,
    aspect_ratio=0.41,
    border=(5, 5, 635, 475),
    labels=("person",),
    ignore_labels=("person?", "people", "ignore"),
    visibility="dbeval",
    min_miss_rate=0.0,
    empty_setup_miss_rate=1.0,
)

# The ECP evaluation script (ECPB eval.py create_evaluator, params.py ParamsFactory): pedestrians
# are the targets; riders are tolerated (ignored, matched by IoU); far-away groups are don't-care
# regions (intersection over detection area); other identities are not used. A setup without
# targets and without counted detections scores 1.0 (the script's curve is empty).
ECP = Protocol(
    name="ecp",
    setups={
        "reasonable": Setup((40, INF), occlusion_range=(-INF, 40), truncation_range=(-INF, 40)),
        "small": Setup((30, 60), occlusion_range=(-INF, 40), truncation_range=(-INF, 40)),
        "occluded": Setup((40, INF), occlusion_range=(40, 80), truncation_range=(-INF, 80)),
        "all": Setup((20, INF), occlusion_range=(-INF, 80), truncation_range=(-INF, 80)),
    },
    default_setups=("reasonable", "small", "occluded", "all"),
    det_min_height_inclusive=False,
    clip_window=ECP_IMAGE_WINDOW,
    overlap="ecp",
    labels=("pedestrian",),
    ignore_labels=("rider", "person-group-far-away"),
    ioa_ignore_labels=("person-group-far-away",),
    empty_setup_miss_rate=1.0,
)

PROTOCOLS: Dict[str, Protocol] = {p.name: p for p in (CITYPERSONS, CALTECH, ECP)}


def get_protocol(protocol: Union[str, Protocol]) -> Protocol:
    """Return the :class:`Protocol` named ``protocol`` (or ``protocol`` itself)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise KeyError(f"Unknown miss-rate protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


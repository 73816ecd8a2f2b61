"""The matching core of the miss-rate protocols: MR-FPPI curves and log-average miss rates.

Per setup, ground truth outside the setup's ranges becomes ignore, detections outside the expanded
height range are dropped, detections are matched greedily in score order (non-ignored ground truth
preferred; ignored boxes may absorb many detections and take them off the curve), and recall is
sampled at the protocol's reference FPPI points (see the package docstring).
"""
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .inputs import Detections, GroundTruth
from .protocols import MIN_MISS_RATE, TOOLBOX_FPPI_REFS, Protocol, Setup, get_protocol

__all__ = ["MissRateCurve", "log_average_miss_rate", "evaluate_setup", "miss_rate_curves", "evaluate_miss_rate"]

logger = logging.getLogger(__name__)

@dataclass
class MissRateCurve:
    """Result of one setup.

    Attributes:
        fppi: (K,) false positives per image after each counted detection (score order).
        miss_rate: (K,) miss rate (1 - recall) after each counted detection.
        miss_at_refs: (R,) miss rate sampled at the protocol's reference FPPI points.
        log_average: MR, ``exp(mean(log(max(min_miss_rate, miss_at_refs))))``; NaN without positives
            (the protocol's ``empty_setup_miss_rate`` when there are no detections either).
    """

    fppi: np.ndarray
    miss_rate: np.ndarray
    miss_at_refs: np.ndarray
    log_average: float
    fppi_refs: Tuple[float, ...] = field(default=TOOLBOX_FPPI_REFS)


def _standardise(boxes: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """(N, 4) xywh -> same height and centre, width ``aspect_ratio * h`` (bbApply squarify 3)."""
    out = boxes.copy()
    out[:, 2] = boxes[:, 3] * aspect_ratio
    out[:, 0] = boxes[:, 0] + (boxes[:, 2] - out[:, 2]) / 2
    return out


def _setup_ignore(gt: GroundTruth, protocol: Protocol, setup: Setup) -> np.ndarray:
    """(N,) bool ignore flags of the ground truth under one setup (see :class:`Setup` for the ranges)."""
    if gt.final:
        return gt.ignore
    (h0, h1), (v0, v1) = setup.height_range, setup.vis_range
    above = gt.height > h1 if protocol.height_top_inclusive else gt.height >= h1
    ignore = gt.ignore | (gt.height < h0) | above | (gt.vis < v0) | (gt.vis > v1)
    for levels, (lo, hi) in ((gt.occlusion, setup.occlusion_range), (gt.truncation, setup.truncation_range)):
        ignore = ignore | (levels < lo) | (levels >= hi)
    if protocol.border is not None:
        x0, y0, x1, y1 = protocol.border
        boxes = gt.boxes
        right, bottom = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        inside = (
            (boxes[:, 0] >= x0) & (boxes[:, 0] <= x1) & (right >= x0) & (right <= x1)
            & (boxes[:, 1] >= y0) & (boxes[:, 1] <= y1) & (bottom >= y0) & (bottom <= y1)
        )
        ignore = ignore | ~inside
    return ignore


def _ranked_detections(dt: Detections, protocol: Protocol) -> np.ndarray:
    """Indices of ``dt`` ordered by (image, score descending, file order), top ``max_dets`` each."""
    order = np.lexsort((np.arange(len(dt.scores)), -dt.scores, dt.image_index))
    if protocol.max_dets is not None and len(order):
        images = dt.image_index[order]
        first = np.searchsorted(images, images, side="left")
        order = order[np.arange(len(order)) - first < protocol.max_dets]
    return order


# Same-image (detection, gt) pairs are built and measured this many at a time: arrays that stay
# in the CPU caches (all pairs of a large set at once are memory-bound).
PAIR_CHUNK = 1 << 16


def _pairs(dt_image: np.ndarray, gt_image: np.ndarray, num_images: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """All (detection, gt) index pairs within the same image, in chunks of about PAIR_CHUNK
    pairs (whole detections); detections and gt must be sorted by image."""
    gt_count = np.bincount(gt_image, minlength=num_images)
    gt_start = np.concatenate(([0], np.cumsum(gt_count)[:-1]))
    per_dt = gt_count[dt_image]
    ends = np.cumsum(per_dt)
    bounds = np.unique(np.concatenate(([0], np.searchsorted(ends, np.arange(PAIR_CHUNK, ends[-1] if len(ends) else 0,
                                                                             PAIR_CHUNK)), [len(dt_image)])))
    for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        count = per_dt[first:last]
        pair_dt = np.repeat(np.arange(first, last), count)
        block_start = np.repeat(np.cumsum(count) - count, count)
        pair_gt = np.repeat(gt_start[dt_image[first:last]], count) + np.arange(len(pair_dt)) - block_start
        yield pair_dt, pair_gt


@dataclass
class _PairOverlaps:
    """Overlap terms of the P (detection, gt) pairs that intersect at all; every array is (P,).

    ``inter_*`` / ``union_*`` give IoU against the raw gt box (used when the gt is ignored) and
    against the standardised one (otherwise); ``ioa_union`` is the denominator of the
    intersection over detection area of an ignore region."""

    keep: np.ndarray  # (P0,) bool over the same-image pairs measured: they intersect
    inter_raw: np.ndarray
    inter_std: np.ndarray
    union_std: np.ndarray
    union_raw: np.ndarray
    ioa_union: np.ndarray

    @classmethod
    def joined(cls, parts: Sequence["_PairOverlaps"]) -> "_PairOverlaps":
        """The terms of consecutive chunks of pairs as one (``keep`` of all of them)."""
        return cls(*(_joined([getattr(p, f.name) for p in parts], np.float64) for f in fields(cls)))


def _joined(arrays: Sequence[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


@dataclass
class _Ranked:
    """Boxes of one evaluation in the order pairs index them: detections ranked (``dt_boxes``
    standardised where the protocol does), ground truth sorted by image (``gt_std_boxes``: the
    non-ignored gt's standardised boxes, ``gt_boxes`` where the protocol keeps them). The x
    ranges ``[x, x + w]`` are kept as separate columns, for the first, widest gathers."""

    dt_boxes: np.ndarray  # (M, 4) xywh
    dt_corners: np.ndarray  # (M, 4) x0 y0 x1 y1
    gt_boxes: np.ndarray  # (N, 4) xywh
    gt_std_boxes: np.ndarray  # (N, 4) xywh
    gt_corners: np.ndarray  # (N, 4) x0 y0 x1 y1
    dt_x: Tuple[np.ndarray, np.ndarray] = field(init=False)
    gt_x: Tuple[np.ndarray, np.ndarray] = field(init=False)
    gt_std_x: Tuple[np.ndarray, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.dt_x, self.gt_x, self.gt_std_x = (
            (np.ascontiguousarray(b[:, 0]), b[:, 0] + b[:, 2]) for b in (self.dt_boxes, self.gt_boxes, self.gt_std_boxes))


def _x_overlap(dt_x: Tuple[np.ndarray, np.ndarray], gt_x: Tuple[np.ndarray, np.ndarray], pair_dt: np.ndarray,
               pair_gt: np.ndarray) -> np.ndarray:
    """(P,) width of the pairs' intersections, ``min(x1) - max(x0)`` (<= 0: none)."""
    return np.minimum(dt_x[1][pair_dt], gt_x[1][pair_gt]) - np.maximum(dt_x[0][pair_dt], gt_x[0][pair_gt])


def _toolbox_overlaps(boxes: _Ranked, pair_dt: np.ndarray, pair_gt: np.ndarray) -> _PairOverlaps:
    """bbGt.compOas / the CityPersons script on ``[x y w h]``: intersection ``iw * ih`` where both
    are > 0, ``w * h`` areas, union ``area_d + area_g - inter``; IoU against the standardised
    gt box for non-ignored gt. The widths come first, so that only pairs that meet in x are
    gathered whole."""
    iw_raw = _x_overlap(boxes.dt_x, boxes.gt_x, pair_dt, pair_gt)
    standardised = boxes.gt_std_boxes is not boxes.gt_boxes
    iw_std = _x_overlap(boxes.dt_x, boxes.gt_std_x, pair_dt, pair_gt) if standardised else iw_raw
    near = (iw_raw > 0) | (iw_std > 0)
    iw_raw, iw_std = iw_raw[near], iw_std[near]
    d, g_raw, g_std = boxes.dt_boxes[pair_dt[near]], boxes.gt_boxes[pair_gt[near]], boxes.gt_std_boxes[pair_gt[near]]
    ih = np.minimum(d[:, 1] + d[:, 3], g_raw[:, 1] + g_raw[:, 3]) - np.maximum(d[:, 1], g_raw[:, 1])
    hit_raw, hit_std = (iw_raw > 0) & (ih > 0), (iw_std > 0) & (ih > 0)
    meet = hit_raw | hit_std
    keep = near.copy()
    keep[near] = meet
    inter_raw = np.where(hit_raw, iw_raw * ih, 0.0)[meet]
    inter_std = np.where(hit_std, iw_std * ih, 0.0)[meet]
    d, g_raw, g_std = d[meet], g_raw[meet], g_std[meet]
    dt_area = d[:, 2] * d[:, 3]
    union_std = dt_area + g_std[:, 2] * g_std[:, 3] - inter_std
    union_raw = dt_area + g_raw[:, 2] * g_raw[:, 3] - inter_raw
    return _PairOverlaps(keep, inter_raw, inter_std, union_std, union_raw, dt_area)


def _ecp_overlaps(boxes: _Ranked, pair_dt: np.ndarray, pair_gt: np.ndarray) -> _PairOverlaps:
    """The ECP script's CompareRectangles / iou_ecp on the corners: the gt box spans
    min..max of its corners, the intersection ``w * h`` counts where both are > 0, IoU is
    ``tp / ((tp + (area_d - tp)) + (area_g - tp))`` and IoA ``tp / ((area_d - tp) + tp)``
    (areas ``h * w``; a detection with x1 < x0 meets nothing)."""
    c = boxes.gt_corners[pair_gt]
    g = np.stack([np.minimum(c[:, 0], c[:, 2]), np.minimum(c[:, 1], c[:, 3]),
                  np.maximum(c[:, 0], c[:, 2]), np.maximum(c[:, 1], c[:, 3])], axis=1)
    d = boxes.dt_corners[pair_dt]
    w = np.minimum(g[:, 2], d[:, 2]) - np.maximum(g[:, 0], d[:, 0])
    h = np.minimum(g[:, 3], d[:, 3]) - np.maximum(g[:, 1], d[:, 1])
    keep = (w > 0) & (h > 0)
    g, d, tp = g[keep], d[keep], w[keep] * h[keep]
    fp = (d[:, 3] - d[:, 1]) * (d[:, 2] - d[:, 0]) - tp
    fn = (g[:, 3] - g[:, 1]) * (g[:, 2] - g[:, 0]) - tp
    union = tp + fp + fn
    return _PairOverlaps(keep, tp, tp, union, union, fp + tp)


# Protocol.overlap -> (ranked boxes, same-image pairs (P0,) into them) -> overlaps
PAIR_OVERLAPS = {"toolbox": _toolbox_overlaps, "ecp": _ecp_overlaps}


@dataclass
class _PairGeometry:
    """Setup-independent work shared by all setups of one (gt, dt) evaluation.

    Detections are ranked (image, score desc, file order; top ``max_dets`` per image) and
    standardised; ground truth is sorted by image. Only overlapping (detection, gt) pairs are
    kept, with the terms of :class:`_PairOverlaps`.
    """

    dt_order: np.ndarray  # (M,) indices into the Detections
    dt_height: np.ndarray  # (M,)
    gt_order: np.ndarray  # (N,) indices into the GroundTruth
    pair_dt: np.ndarray  # (P,) into dt_order
    pair_gt: np.ndarray  # (P,) into gt_order
    terms: _PairOverlaps
    ioa: np.ndarray  # (N,) bool, gt (in gt_order) overlapped by IoA when ignored

    @classmethod
    def build(cls, gt: GroundTruth, dt: Detections, protocol: Protocol) -> "_PairGeometry":
        dt_order = _ranked_detections(dt, protocol)
        dt_boxes = dt.boxes[dt_order]
        if protocol.aspect_ratio is not None and not dt.final:
            dt_boxes = _standardise(dt_boxes, protocol.aspect_ratio)
        gt_order = np.argsort(gt.image_index, kind="stable")
        gt_boxes = gt.boxes[gt_order]
        gt_std = gt_boxes if gt.final or protocol.aspect_ratio is None else _standardise(gt_boxes, protocol.aspect_ratio)
        boxes = _Ranked(dt_boxes, dt.corners[dt_order], gt_boxes, gt_std, gt.corners[gt_order])
        rule = PAIR_OVERLAPS[protocol.overlap]
        pair_dt, pair_gt, terms = [], [], []
        for p_dt, p_gt in _pairs(dt.image_index[dt_order], gt.image_index[gt_order], gt.num_images):
            t = rule(boxes, p_dt, p_gt)
            pair_dt.append(p_dt[t.keep])
            pair_gt.append(p_gt[t.keep])
            terms.append(t)
        return cls(dt_order, dt_boxes[:, 3], gt_order, _joined(pair_dt, np.int64), _joined(pair_gt, np.int64),
                   _PairOverlaps.joined(terms), gt.ioa[gt_order])

    def overlaps(self, pair_ignored: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """(len(pairs),) overlap of the selected pairs: for ignored gt IoA (regions) or IoU with
        the raw box, otherwise IoU with the standardised box."""
        t = self.terms
        region = pair_ignored & self.ioa[self.pair_gt[pairs]]
        inter = np.where(pair_ignored, t.inter_raw[pairs], t.inter_std[pairs])
        denom = np.where(region, t.ioa_union[pairs],
                         np.where(pair_ignored, t.union_raw[pairs], t.union_std[pairs]))
        return np.divide(inter, denom, out=np.zeros_like(inter), where=inter > 0)


def _greedy_match(
    num_dt: int, pair_dt: np.ndarray, pair_gt: np.ndarray, overlap: np.ndarray, pair_ignored: np.ndarray,
    num_gt: int, threshold: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy matching of detections (in processing order) to ground truth.

    Returns (M,) bool true positives and (M,) bool "matched an ignore region" flags. A detection
    takes the unmatched non-ignored gt of highest overlap >= threshold (ties: the later gt, as
    the toolbox's ``>=`` update does); failing that, any ignored gt with overlap >= threshold.
    """
    hit = overlap >= min(threshold, 1 - 1e-10)
    on_ignore = np.zeros(num_dt, dtype=bool)
    on_ignore[pair_dt[hit & pair_ignored]] = True
    regular = hit & ~pair_ignored
    cand_dt, cand_gt, cand_ov = pair_dt[regular], pair_gt[regular], overlap[regular]
    order = np.lexsort((-cand_gt, -cand_ov, cand_dt))
    cand_dt, cand_gt = cand_dt[order].tolist(), cand_gt[order].tolist()
    tp = np.zeros(num_dt, dtype=bool)
    used = bytearray(num_gt)
    current, done = -1, False
    for d, g in zip(cand_dt, cand_gt):
        if d != current:
            current, done = d, False
        if done or used[g]:
            continue
        used[g] = 1
        tp[d] = True
        done = True
    return tp, on_ignore & ~tp


def log_average_miss_rate(
    fppi: np.ndarray,
    recall: np.ndarray,
    fppi_refs: Sequence[float] = TOOLBOX_FPPI_REFS,
    min_miss_rate: float = MIN_MISS_RATE,
) -> Tuple[float, np.ndarray]:
    """MR over the reference points and the (R,) miss rates sampled there.

    ``fppi``/``recall`` (K,) follow the detections in score order. At each reference point the
    recall of the last detection with ``fppi <= ref`` is taken, 0 if there is none (bbGt
    compRoc's ``[-inf; xs]`` / ``[0; ys]`` padding). Miss rates are clamped to
    ``min_miss_rate`` before the log; with 0 (dbEval.m) a miss rate of 0 makes MR 0.
    """
    last = np.searchsorted(fppi, np.asarray(fppi_refs), side="right") - 1
    padded = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64)))
    miss = 1.0 - padded[last + 1]
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(np.maximum(min_miss_rate, miss))))), miss


def evaluate_setup(
    gt: GroundTruth,
    dt: Detections,
    protocol: Union[str, Protocol],
    setup: Union[str, Setup],
    geometry: Optional[_PairGeometry] = None,
) -> MissRateCurve:
    """MR-FPPI curve and MR of ``dt`` against ``gt`` under one setup of ``protocol``.

    ``geometry`` (setup-independent pair work) is built when not given; :func:`miss_rate_curves`
    shares one between setups.
    """
    protocol = get_protocol(protocol)
    if isinstance(setup, str):
        if setup not in protocol.setups:
            raise KeyError(f"Unknown setup {setup!r} of protocol {protocol.name!r}; known: {list(protocol.setups)}")
        setup = protocol.setups[setup]
    geo = geometry if geometry is not None else _PairGeometry.build(gt, dt, protocol)
    gt_ignore = _setup_ignore(gt, protocol, setup)[geo.gt_order]

    h0, h1 = setup.height_range
    low = h0 / protocol.expand_filter
    above_low = geo.dt_height >= low if protocol.det_min_height_inclusive else geo.dt_height > low
    kept = above_low & (geo.dt_height < h1 * protocol.expand_filter)
    new_index = np.cumsum(kept) - 1
    pairs = np.flatnonzero(kept[geo.pair_dt])
    pair_gt = geo.pair_gt[pairs]
    pair_ignored = gt_ignore[pair_gt]
    overlap = geo.overlaps(pair_ignored, pairs)
    num_dt = int(kept.sum())
    tp, ignored = _greedy_match(
        num_dt, new_index[geo.pair_dt[pairs]], pair_gt, overlap, pair_ignored, len(gt_ignore), protocol.iou_threshold
    )
    num_pos = int(np.count_nonzero(~gt_ignore))
    counted = ~ignored
    dt_scores = dt.scores[geo.dt_order[kept]]
    rank = np.argsort(-dt_scores[counted], kind="stable")
    tp = tp[counted][rank]
    fppi = np.cumsum(~tp) / gt.num_images
    if num_pos == 0:
        mr = protocol.empty_setup_miss_rate if len(tp) == 0 else math.nan
        if math.isnan(mr):
            logger.warning("%s: no non-ignored ground truth in this setup; MR is undefined (NaN)", gt.source)
        at_refs = np.full(len(protocol.fppi_refs), mr)
        return MissRateCurve(fppi, np.full(len(tp), np.nan), at_refs, mr, protocol.fppi_refs)
    recall = np.cumsum(tp) / num_pos
    mr, miss = log_average_miss_rate(fppi, recall, protocol.fppi_refs, protocol.min_miss_rate)
    return MissRateCurve(fppi, 1.0 - recall, miss, mr, protocol.fppi_refs)


def miss_rate_curves(
    gt: GroundTruth,
    dt: Detections,
    protocol: Union[str, Protocol] = "citypersons",
    setups: Optional[Sequence[str]] = None,
) -> Dict[str, MissRateCurve]:
    """{setup: MissRateCurve} for ``setups`` (default: the protocol's standard ones)."""
    protocol = get_protocol(protocol)
    geometry = _PairGeometry.build(gt, dt, protocol)
    return {name: evaluate_setup(gt, dt, protocol, name, geometry) for name in (setups or protocol.default_setups)}


def evaluate_miss_rate(
    gt: GroundTruth,
    dt: Detections,
    protocol: Union[str, Protocol] = "citypersons",
    setups: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """{setup: log-average miss rate as a fraction} (NaN where a setup has no positives)."""
    return {name: c.log_average for name, c in miss_rate_curves(gt, dt, protocol, setups).items()}



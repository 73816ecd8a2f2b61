"""Log-average miss rate (MR^-2) of pedestrian detectors, as the official tools compute it.

The protocol is Dollar et al.'s (Caltech toolbox ``dbEval.m`` / ``bbGt.m``), as also ported to
Python by the official CityPersons script ``eval_MR_multisetup.py``:

* every *setup* (e.g. "Reasonable") has a height range and a visibility range (both inclusive);
  ground truth outside them becomes *ignore* (it is not removed);
* detections whose height lies outside ``[hmin / 1.25, hmax * 1.25)`` are dropped;
* per image, detections are matched greedily in (stable) score order at overlap >= 0.5,
  non-ignored ground truth preferred; the overlap with an ignored box is intersection over
  *detection* area, ignored boxes may absorb many detections, and a detection matched to one
  leaves the curve;
* FPPI is counted over all images; recall is sampled at the 9 reference FPPI points
  ``10^(-2:0.25:0)`` and ``MR = exp(mean(log(miss)))``.

The Caltech protocol additionally keeps only the labels ``person`` (and ``people`` as ignore),
ignores boxes outside the ``[5 5 635 475]`` border, and standardises non-ignored ground truth and
all detections to width ``0.41 * h`` about their centre.

Differences from the official Python script (its bugs; the MATLAB toolbox is followed instead):

* a reference FPPI below the first false positive samples recall 0 (the script reads
  ``recall[-1]``, the curve's *end*, when the top-scoring detections are false positives);
* a detection matched to a ground-truth box whose annotation id is 0 counts as a true positive
  (the script stores ids as match flags, so id 0 reads as "unmatched");
* no detections at all gives MR 1.0 (no crash);
* a miss rate of 0 at a reference point is clamped to 1e-10 before the log, as ``dbEval.m`` does
  (``exp(mean(log(max(1e-10, 1 - recall))))``); the script's ``log(0)`` would make MR 0.

Run ``python -m hkd_d2.evaluation.miss_rate GT DT`` for the command line (see :func:`main`).
"""
import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "Setup",
    "Protocol",
    "PROTOCOLS",
    "GroundTruth",
    "Detections",
    "MissRateCurve",
    "get_protocol",
    "load_ground_truth",
    "load_detections",
    "evaluate_setup",
    "miss_rate_curves",
    "evaluate_miss_rate",
    "log_average_miss_rate",
    "main",
]

logger = logging.getLogger(__name__)

INF = math.inf
# Clamp of the miss rate before the log, as dbEval.m does (max(1e-10, 1 - recall)).
MIN_MISS_RATE = 1e-10
# The reference FPPI points of dbEval.m: 10.^(-2:.25:0).
TOOLBOX_FPPI_REFS = tuple(10.0 ** np.arange(-2.0, 0.001, 0.25))
# eval_MR_multisetup.py writes the same points rounded to 4 decimals (identical results unless
# a data set has several thousand images).
CITYPERSONS_FPPI_REFS = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000)


class MissRateInputError(ValueError):
    """Malformed ground truth or detections; the message names the file / image at fault."""


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


@dataclass
class GroundTruth:
    """Ground truth of a set of images, as flat arrays over all N boxes.

    Attributes:
        image_ids: (I,) ids of the evaluated images; FPPI divides by I.
        image_index: (N,) int, index into ``image_ids`` of each box's image.
        boxes: (N, 4) float64 ``[x, y, w, h]`` full boxes.
        ignore: (N,) bool, the source's own ignore flag.
        height: (N,) float64 height used by the setups' height ranges.
        vis: (N,) float64 visible fraction used by the setups' visibility ranges.
        final: ignore flags and boxes are final (a toolbox ``gt-*.mat``): setups only filter
            detections.
        source: file or dataset name, for error messages.
    """

    image_ids: List[Any]
    image_index: np.ndarray
    boxes: np.ndarray
    ignore: np.ndarray
    height: np.ndarray
    vis: np.ndarray
    final: bool = False
    source: str = "<ground truth>"

    @classmethod
    def from_annotations(
        cls,
        image_ids: Sequence[Any],
        annotations: Sequence[Mapping[str, Any]],
        protocol: Union[str, Protocol],
        source: str = "<ground truth>",
    ) -> "GroundTruth":
        """Build from COCO-style / Detectron2-record annotations (each with an ``image_id``).

        Uses ``bbox``, and when present ``ignore`` (else COCO's ``iscrowd``), ``height``, ``vis_ratio`` (else computed from
        ``vis_bbox``, else 1), ``label`` and ``category_id``. Labels other than the protocol's
        pedestrian / ignore labels are removed, as dbEval.m does.
        """
        protocol = get_protocol(protocol)
        index_of = {img: i for i, img in enumerate(image_ids)}
        keep_labels = set(protocol.labels) | set(protocol.ignore_labels)
        category = protocol.category_id
        anns = [
            a for a in annotations
            if (category is None or a.get("category_id", category) == category)
            and not (keep_labels and a.get("label") is not None and a["label"] not in keep_labels)
        ]
        images = []
        for a in anns:
            if a.get("image_id") not in index_of:
                raise MissRateInputError(f"{source}: annotation for unknown image id {a.get('image_id')!r}")
            images.append(index_of[a["image_id"]])
        try:
            boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        except (KeyError, TypeError, ValueError):
            boxes = None
        if boxes is None or not np.isfinite(boxes).all():
            for a in anns:
                _checked_box(a.get("bbox"), source, a["image_id"])
        flags = [bool(a.get("ignore", a.get("iscrowd", 0))) or a.get("label") in protocol.ignore_labels for a in anns]
        heights = [a["height"] if "height" in a else box[3] for a, box in zip(anns, boxes)]
        vis = np.asarray([_visibility(a, box) for a, box in zip(anns, boxes)], dtype=np.float64)
        if protocol.unoccluded_vis is not None:
            vis[vis >= 1.0] = protocol.unoccluded_vis
        return cls(
            image_ids=list(image_ids),
            image_index=np.asarray(images, dtype=np.int64),
            boxes=boxes,
            ignore=np.asarray(flags, dtype=bool),
            height=np.asarray(heights, dtype=np.float64),
            vis=vis,
            source=source,
        )

    @classmethod
    def from_toolbox_cells(cls, cells: Sequence[np.ndarray], source: str = "<gt cells>") -> "GroundTruth":
        """Build from the toolbox's per-image ``[x y w h ignore]`` arrays (already final)."""
        image_index, boxes = _stack_cells(cells, 5, source)
        return cls(
            image_ids=list(range(1, len(cells) + 1)),
            image_index=image_index,
            boxes=boxes[:, :4],
            ignore=boxes[:, 4] != 0,
            height=boxes[:, 3].copy(),
            vis=np.full(len(boxes), INF),
            final=True,
            source=source,
        )

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


@dataclass
class Detections:
    """Detections as flat arrays over all M boxes.

    Attributes:
        image_index: (M,) int index into the ground truth's ``image_ids``.
        boxes: (M, 4) float64 ``[x, y, w, h]``.
        scores: (M,) float64.
        final: boxes are already standardised (a toolbox ``dt-*.mat``).
    """

    image_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    final: bool = False

    @classmethod
    def from_results(
        cls,
        results: Sequence[Mapping[str, Any]],
        gt: GroundTruth,
        protocol: Union[str, Protocol],
        source: str = "<detections>",
    ) -> "Detections":
        """Build from a COCO results list (``image_id``, ``bbox`` [x, y, w, h], ``score``)."""
        protocol = get_protocol(protocol)
        index_of = {img: i for i, img in enumerate(gt.image_ids)}
        category = protocol.category_id
        if category is not None:
            results = [r for r in results if r.get("category_id", category) == category]
        try:
            images = [index_of[r["image_id"]] for r in results]
            boxes = np.asarray([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
            scores = np.asarray([r["score"] for r in results], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            _raise_bad_result(results, index_of, source)
        bad = ~np.isfinite(boxes).all(axis=1) | ~np.isfinite(scores)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MissRateInputError(
                f"{source}: detection #{i} of image id {results[i]['image_id']!r} has a "
                f"non-finite box or score: {results[i]['bbox']}, {results[i]['score']}"
            )
        return cls(np.asarray(images, dtype=np.int64), boxes, scores)

    @classmethod
    def from_toolbox_cells(cls, cells: Sequence[np.ndarray], source: str = "<dt cells>") -> "Detections":
        """Build from the toolbox's per-image ``[x y w h score]`` arrays (already standardised)."""
        image_index, rows = _stack_cells(cells, 5, source)
        return cls(image_index, rows[:, :4].copy(), rows[:, 4].copy(), final=True)


@dataclass
class MissRateCurve:
    """Result of one setup.

    Attributes:
        fppi: (K,) false positives per image after each counted detection (score order).
        miss_rate: (K,) miss rate (1 - recall) after each counted detection.
        miss_at_refs: (R,) miss rate sampled at the protocol's reference FPPI points.
        log_average: MR, ``exp(mean(log(max(1e-10, miss_at_refs))))``; NaN without positives.
    """

    fppi: np.ndarray
    miss_rate: np.ndarray
    miss_at_refs: np.ndarray
    log_average: float
    fppi_refs: Tuple[float, ...] = field(default=TOOLBOX_FPPI_REFS)


def _checked_box(bbox: Any, source: str, image_id: Any) -> List[float]:
    try:
        box = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise MissRateInputError(f"{source}: image id {image_id!r}: bad bbox {bbox!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise MissRateInputError(f"{source}: image id {image_id!r}: bad bbox {bbox!r}")
    return box


def _visibility(ann: Mapping[str, Any], box: np.ndarray) -> float:
    if "vis_ratio" in ann:
        return ann["vis_ratio"]
    vis_box = ann.get("vis_bbox")
    if vis_box is None or box[2] * box[3] <= 0:
        return 1.0
    return float(vis_box[2]) * float(vis_box[3]) / float(box[2] * box[3])


def _raise_bad_result(results: Sequence[Any], index_of: Mapping[Any, int], source: str) -> None:
    for i, r in enumerate(results):
        if not isinstance(r, Mapping) or not {"image_id", "bbox", "score"} <= set(r):
            raise MissRateInputError(f"{source}: detection #{i} lacks image_id/bbox/score: {r!r}")
        if r["image_id"] not in index_of:
            raise MissRateInputError(
                f"{source}: detection #{i} is for image id {r['image_id']!r}, "
                "which is not in the ground truth"
            )
        _checked_box(r["bbox"], source, r["image_id"])
        try:
            float(r["score"])
        except (TypeError, ValueError):
            raise MissRateInputError(
                f"{source}: detection #{i} of image id {r['image_id']!r} has a bad score {r['score']!r}"
            ) from None
    raise MissRateInputError(f"{source}: malformed detections")


def _stack_cells(cells: Sequence[np.ndarray], width: int, source: str) -> Tuple[np.ndarray, np.ndarray]:
    arrays = []
    for i, cell in enumerate(cells):
        a = np.asarray(cell, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, width)
        if a.ndim != 2 or a.shape[1] < width:
            raise MissRateInputError(f"{source}: cell {i + 1} has shape {a.shape}, expected (n, {width})")
        if not np.isfinite(a[:, :width]).all():
            raise MissRateInputError(f"{source}: cell {i + 1} (image {i + 1}) holds NaN/inf values")
        arrays.append(a[:, :width])
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    rows = np.concatenate(arrays) if arrays else np.zeros((0, width))
    return np.repeat(np.arange(len(arrays)), counts), rows


def _standardise(boxes: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """(N, 4) xywh -> same height and centre, width ``aspect_ratio * h`` (bbApply squarify 3)."""
    out = boxes.copy()
    out[:, 2] = boxes[:, 3] * aspect_ratio
    out[:, 0] = boxes[:, 0] + (boxes[:, 2] - out[:, 2]) / 2
    return out


def _setup_ignore(gt: GroundTruth, protocol: Protocol, setup: Setup) -> np.ndarray:
    """(N,) bool ignore flags of the ground truth under one setup (inclusive ranges)."""
    if gt.final:
        return gt.ignore
    (h0, h1), (v0, v1) = setup.height_range, setup.vis_range
    ignore = gt.ignore | (gt.height < h0) | (gt.height > h1) | (gt.vis < v0) | (gt.vis > v1)
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


def _pairs(dt_image: np.ndarray, gt_image: np.ndarray, num_images: int) -> Tuple[np.ndarray, np.ndarray]:
    """All (detection, gt) index pairs within the same image; gt must be sorted by image."""
    gt_count = np.bincount(gt_image, minlength=num_images)
    gt_start = np.concatenate(([0], np.cumsum(gt_count)[:-1]))
    per_dt = gt_count[dt_image]
    pair_dt = np.repeat(np.arange(len(dt_image)), per_dt)
    block_start = np.repeat(np.cumsum(per_dt) - per_dt, per_dt)
    pair_gt = np.repeat(gt_start[dt_image], per_dt) + np.arange(len(pair_dt)) - block_start
    return pair_dt, pair_gt


def _intersections(dt_boxes: np.ndarray, gt_boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row-wise intersection area of (P, 4) xywh pairs, and whether they overlap at all (P,)."""
    iw = np.minimum(dt_boxes[:, 0] + dt_boxes[:, 2], gt_boxes[:, 0] + gt_boxes[:, 2]) - np.maximum(
        dt_boxes[:, 0], gt_boxes[:, 0])
    ih = np.minimum(dt_boxes[:, 1] + dt_boxes[:, 3], gt_boxes[:, 1] + gt_boxes[:, 3]) - np.maximum(
        dt_boxes[:, 1], gt_boxes[:, 1])
    return iw * ih, (iw > 0) & (ih > 0)


@dataclass
class _PairGeometry:
    """Setup-independent work shared by all setups of one (gt, dt) evaluation.

    Detections are ranked (image, score desc, file order; top ``max_dets`` per image) and
    standardised; ground truth is sorted by image. Only overlapping (detection, gt) pairs are
    kept, with the areas needed for IoU against the standardised gt box (used when the gt is
    not ignored) and intersection-over-detection-area against the raw gt box (when ignored).
    """

    dt_order: np.ndarray  # (M,) indices into the Detections
    dt_height: np.ndarray  # (M,)
    gt_order: np.ndarray  # (N,) indices into the GroundTruth
    pair_dt: np.ndarray  # (P,) into dt_order
    pair_gt: np.ndarray  # (P,) into gt_order
    inter_raw: np.ndarray  # (P,) intersection with the raw gt box (0 if none)
    inter_std: np.ndarray  # (P,) intersection with the standardised gt box (0 if none)
    union_std: np.ndarray  # (P,) union with the standardised gt box
    dt_area: np.ndarray  # (P,)

    @classmethod
    def build(cls, gt: GroundTruth, dt: Detections, protocol: Protocol) -> "_PairGeometry":
        dt_order = _ranked_detections(dt, protocol)
        dt_boxes = dt.boxes[dt_order]
        if protocol.aspect_ratio is not None and not dt.final:
            dt_boxes = _standardise(dt_boxes, protocol.aspect_ratio)
        gt_order = np.argsort(gt.image_index, kind="stable")
        gt_raw = gt.boxes[gt_order]
        pair_dt, pair_gt = _pairs(dt.image_index[dt_order], gt.image_index[gt_order], gt.num_images)
        d, g_raw = dt_boxes[pair_dt], gt_raw[pair_gt]
        inter_raw, hit_raw = _intersections(d, g_raw)
        if protocol.aspect_ratio is not None and not gt.final:
            g_std = _standardise(g_raw, protocol.aspect_ratio)
            inter_std, hit_std = _intersections(d, g_std)
        else:
            g_std, inter_std, hit_std = g_raw, inter_raw, hit_raw
        keep = hit_raw | hit_std
        inter_raw = np.where(hit_raw, inter_raw, 0.0)[keep]
        inter_std = np.where(hit_std, inter_std, 0.0)[keep]
        dt_area = (d[keep, 2] * d[keep, 3])
        union_std = dt_area + g_std[keep, 2] * g_std[keep, 3] - inter_std
        return cls(dt_order, dt_boxes[:, 3], gt_order, pair_dt[keep], pair_gt[keep],
                   inter_raw, inter_std, union_std, dt_area)

    def overlaps(self, pair_ignored: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """(len(pairs),) overlap of the selected pairs: IoA for ignored gt, IoU otherwise."""
        inter = np.where(pair_ignored, self.inter_raw[pairs], self.inter_std[pairs])
        denom = np.where(pair_ignored, self.dt_area[pairs], self.union_std[pairs])
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
    fppi: np.ndarray, recall: np.ndarray, fppi_refs: Sequence[float] = TOOLBOX_FPPI_REFS
) -> Tuple[float, np.ndarray]:
    """MR over the reference points and the (R,) miss rates sampled there.

    ``fppi``/``recall`` (K,) follow the detections in score order. At each reference point the
    recall of the last detection with ``fppi <= ref`` is taken, 0 if there is none (bbGt
    compRoc's ``[-inf; xs]`` / ``[0; ys]`` padding).
    """
    last = np.searchsorted(fppi, np.asarray(fppi_refs), side="right") - 1
    padded = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64)))
    miss = 1.0 - padded[last + 1]
    return float(np.exp(np.mean(np.log(np.maximum(MIN_MISS_RATE, miss))))), miss


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
    kept = (geo.dt_height >= h0 / protocol.expand_filter) & (geo.dt_height < h1 * protocol.expand_filter)
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
        logger.warning("%s: no non-ignored ground truth in this setup; MR is undefined (NaN)", gt.source)
        nan = np.full(len(protocol.fppi_refs), np.nan)
        return MissRateCurve(fppi, np.full(len(tp), np.nan), nan, math.nan, protocol.fppi_refs)
    recall = np.cumsum(tp) / num_pos
    mr, miss = log_average_miss_rate(fppi, recall, protocol.fppi_refs)
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


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissRateInputError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise MissRateInputError(f"{path}: malformed JSON ({e})") from None


def _read_mat_cells(path: Path, variable: str) -> Sequence[np.ndarray]:
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except FileNotFoundError:
        raise MissRateInputError(f"{path}: no such file") from None
    except Exception as e:  # scipy raises several types for corrupt files
        raise MissRateInputError(f"{path}: not a readable MATLAB file ({e})") from None
    if variable not in data:
        raise MissRateInputError(f"{path}: no variable {variable!r} (found {[k for k in data if not k.startswith('__')]})")
    return list(np.asarray(data[variable], dtype=object).ravel())


def load_ground_truth(path: Union[str, Path], protocol: Union[str, Protocol] = "citypersons") -> GroundTruth:
    """Read a COCO-style ground-truth JSON (with ignore / height / vis_ratio fields), or a toolbox
    ``.mat`` holding a cell array ``gt`` of ``[x y w h ignore]`` rows (used as given)."""
    path = Path(path)
    if path.suffix == ".mat":
        return GroundTruth.from_toolbox_cells(_read_mat_cells(path, "gt"), source=str(path))
    data = _read_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise MissRateInputError(f"{path}: expected a COCO-style object with 'images' and 'annotations'")
    try:
        image_ids = sorted(img["id"] for img in data["images"])
    except (KeyError, TypeError):
        raise MissRateInputError(f"{path}: every entry of 'images' needs an 'id'") from None
    return GroundTruth.from_annotations(image_ids, data["annotations"], protocol, source=str(path))


def load_detections(
    path: Union[str, Path], gt: GroundTruth, protocol: Union[str, Protocol] = "citypersons"
) -> Detections:
    """Read a COCO results JSON, or a toolbox ``.mat`` cell array ``dt`` of ``[x y w h score]``."""
    path = Path(path)
    if path.suffix == ".mat":
        cells = _read_mat_cells(path, "dt")
        if len(cells) != gt.num_images:
            raise MissRateInputError(f"{path}: {len(cells)} cells but the ground truth has {gt.num_images} images")
        return Detections.from_toolbox_cells(cells, source=str(path))
    data = _read_json(path)
    if not isinstance(data, list):
        raise MissRateInputError(f"{path}: expected a COCO results list of detections")
    return Detections.from_results(data, gt, protocol, source=str(path))


def _format_table(results: Mapping[str, float]) -> str:
    width = max(len(k) for k in results) if results else 5
    lines = [f"{'setup':<{width}}  MR (%)  MR (fraction)", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {100 * mr:6.2f}  {mr:.6f}" for name, mr in results.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m hkd_d2.evaluation.miss_rate GT DT [options]``."""
    parser = argparse.ArgumentParser(description="Log-average miss rate (MR^-2) of pedestrian detections.")
    parser.add_argument("gt", help="ground truth: COCO-style JSON, or toolbox gt-*.mat")
    parser.add_argument("dt", help="detections: COCO results JSON, or toolbox dt-*.mat")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="citypersons")
    parser.add_argument("--setups", nargs="+", help="setups to evaluate (default: the protocol's standard ones)")
    parser.add_argument("--json", action="store_true", help="print one JSON object {setup: miss rate fraction}")
    parser.add_argument("--plot", help="write MR-FPPI curves to this image file")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")

    protocol = get_protocol(args.protocol)
    setups = args.setups
    try:
        gt = load_ground_truth(args.gt, protocol)
        if gt.final and not setups:
            setups = ["Reasonable"]
            logger.info("%s holds final ignore flags; evaluating setup 'Reasonable'", args.gt)
        dt = load_detections(args.dt, gt, protocol)
        curves = miss_rate_curves(gt, dt, protocol, setups)
    except (MissRateInputError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    results = {name: c.log_average for name, c in curves.items()}
    if args.plot:
        from .plots import plot_mr_fppi

        plot_mr_fppi({f"{Path(args.dt).stem} {name}": c for name, c in curves.items()}, args.plot,
                     title=f"{protocol.name}: {Path(args.dt).name}")
        logger.info("wrote %s", args.plot)
    if args.json:
        print(json.dumps({k: (None if math.isnan(v) else v) for k, v in results.items()}))
    else:
        print(_format_table(results))
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module, so its classes are the ones the rest of hkd_d2 uses.
    from hkd_d2.evaluation.miss_rate import main as _package_main

    sys.exit(_package_main())

"""CrowdHuman metrics (AP@0.5, MR^-2, JI) as the CrowdHuman / CrowdDet evaluation code computes them.

Sources (CrowdDet, ``lib/evaluate``): ``APMRToolkits/image.py`` (``Image.load``: full boxes
``fbox``, tag ``person`` -> target, ``mask`` or ``extra.ignore`` -> ignore region;
``clip_all_boader``; ``compare_caltech``), ``APMRToolkits/database.py`` (``eval_AP``,
``eval_MR``) and ``compute_JI.py`` / ``JIToolkits`` (``compute_JI_with_ignore``, ``gather``), as
``tools/eval_json.py`` runs them on a detection dump (``ID``, ``width``, ``height``, ``dtboxes``).
Boxes are ``[x0, y0, x1, y1]`` with ``x1 = x + w``; overlaps carry the scripts' ``eps = 1e-6``.

* Clipping: x0 to [0, W-1], x1 to [0, W] (same for y), with the annotation's ``width`` /
  ``height`` where it has them, else the dump's.
* Matching (AP and MR), per image: detections in (stable) score order take the unmatched target
  of highest IoU ``> 0.5`` (ties: the first in file order); failing that, one that overlaps an
  ignore box by intersection over detection area ``> 0.5`` is dropped; the others are false
  positives. Every box counts, degenerate ones included (a target nothing can match is a miss).
* AP: trapezoids between the consecutive (recall, precision) points of the score-ordered list
  (no point added at recall 0).
* MR^-2: at each FPPI reference ``[0.0100 0.0178 0.0316 0.0562 0.1 0.1778 0.3162 0.5623 1]`` the
  miss rate of the first detection whose FPPI is ``>=`` it (the last one if none), then
  ``exp(mean(log(.)))`` unclamped.
* JI: for each score threshold ``0.1 * i``, ``i = 0..9``, and image, a maximum-weight matching of
  the kept detections (score ``>`` threshold) to the targets on IoU ``> 0.5``; unmatched
  detections / targets inside an ignore box (IoA ``> 0.5``) are not counted; the image's
  ``k / (m + n - k + eps)``, averaged over the images with ``m`` or ``n`` non-zero; JI is the best
  threshold's mean. The ground truth is the annotation's (eval_json.py reads it from the dump,
  where tools/test.py rounds it to 0.1 px: the same for CrowdHuman's integer boxes).

Where the scripts crash, the smallest fix that avoids the crash is followed:

* E, an image without ground-truth boxes (``ValueError`` unpacking its boxes): its detections
  are false positives;
* M, an image missing from the dump (``AttributeError``): it has no detections, for AP/MR and
  JI alike (JI then clips its boxes with the annotation's size, or not at all without one);
* N, no counted detection at all (MR ``log`` of an empty list, NaN): MR 1.0 (AP is 0.0);
* J, a JI threshold at which no image has a target or a kept detection (0 / 0): left out of
  the maximum (none left: JI 0.0).

With counted detections and no target at all, recall is 0 / 0 as in the scripts: MR is NaN, and
AP too from two counted detections on (one point has no trapezoid: 0).

Command line: ``hkd-crowdhuman-eval GT.odgt DT.odgt [--json]`` (:func:`main`).
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .miss_rate.inputs import xywh_corners

__all__ = [
    "CrowdHumanImage",
    "CrowdHumanInputError",
    "CROWDHUMAN_MR_REFS",
    "images_from_odgt",
    "average_precision",
    "crowdhuman_miss_rate",
    "jaccard_index",
    "crowdhuman_metrics",
    "main",
]

EPS = 1e-6
IOU_THRESHOLD = 0.5
# database.py eval_MR, "CALTECH_-2"
CROWDHUMAN_MR_REFS = (0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
# compute_JI.py: score thresholds 1e-1 * i
JI_SCORE_THRESHOLDS = tuple(1e-1 * i for i in range(10))
TARGET_TAG = "person"


class CrowdHumanInputError(ValueError):
    """Malformed annotation or detection lines; the message names the image at fault."""


@dataclass
class CrowdHumanImage:
    """One image: gt (N, 4) xyxy with ignore (N,) bool, detections (M, 4) xyxy with scores (M,),
    in file order; ``width`` / ``height`` None when unknown (only allowed without detections)."""

    gt: np.ndarray
    ignore: np.ndarray
    dt: np.ndarray
    scores: np.ndarray
    width: Optional[float] = None
    height: Optional[float] = None

    def clipped(self) -> "CrowdHumanImage":
        """Boxes clipped as ``clip_all_boader`` (unchanged when the size is unknown)."""
        if self.width is None or self.height is None:
            return self
        return CrowdHumanImage(_clip(self.gt, self.width, self.height), self.ignore,
                               _clip(self.dt, self.width, self.height), self.scores, self.width, self.height)


def _clip(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)
    return out


def _inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(0, iw) * np.maximum(0, ih)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes, ``inter / (area_a + area_b - inter + eps)``."""
    inter = _inter(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + EPS)


def _inside_regions(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(len(boxes),) bool: intersection over the box's area (clamped at 0, plus eps) ``> 0.5``
    with some region (``get_ignores``; the unclamped area of ``compare_caltech`` decides the
    same, a box of no area meeting nothing)."""
    if len(regions) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    return (_inter(boxes, regions) / (area[:, None] + EPS)).max(axis=1) > IOU_THRESHOLD


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def _size(entry: Mapping[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    if "width" in entry and "height" in entry:
        return entry["width"], entry["height"]
    return None, None


def _detections(entry: Mapping[str, Any], source: str) -> Tuple[np.ndarray, np.ndarray]:
    """(M, 4) xyxy and (M,) scores of one dump line's ``dtboxes``."""
    dtboxes = entry.get("dtboxes", [])
    if not isinstance(dtboxes, list):
        raise CrowdHumanInputError(f"{source}: image {entry['ID']!r}: 'dtboxes' must be a list")
    try:
        boxes = np.array([d["box"] for d in dtboxes], dtype=np.float64).reshape(len(dtboxes), 4)
        scores = np.array([d["score"] for d in dtboxes], dtype=np.float64)
        valid = np.isfinite(boxes).all() and np.isfinite(scores).all()
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CrowdHumanInputError(
            f"{source}: image {entry['ID']!r}: every detection needs 'box' [x, y, w, h] and a finite 'score'"
        )
    return xywh_corners(boxes), scores


def images_from_odgt(
    gt_entries: Sequence[Mapping[str, Any]], dt_entries: Sequence[Mapping[str, Any]], source: str = "<detections>"
) -> List[CrowdHumanImage]:
    """Images of parsed annotation lines (``gtboxes``) and dump lines (``dtboxes`` with ``box``,
    ``score``; matched by ``ID``; an image may be missing), in annotation order. Sizes: the
    annotation's ``width`` / ``height``, else the dump's (as ``Image.load``: the first one read).

    Raises CrowdHumanInputError for an ID listed twice, detections of an image that is not in
    the annotations, and detections of an image whose size neither file gives.
    """
    known = set()
    for entry in gt_entries:
        if entry["ID"] in known:
            raise CrowdHumanInputError(f"annotations: image {entry['ID']!r} is listed twice")
        known.add(entry["ID"])
    dets: Dict[Any, Mapping[str, Any]] = {}
    for entry in dt_entries:
        if entry["ID"] not in known:
            raise CrowdHumanInputError(f"{source}: detections of image {entry['ID']!r}, which is not in the annotations")
        if entry["ID"] in dets:
            raise CrowdHumanInputError(f"{source}: image {entry['ID']!r} is listed twice")
        dets[entry["ID"]] = entry
    images = []
    for entry in gt_entries:
        boxes = entry.get("gtboxes", [])
        ignore = np.array([b["tag"] != TARGET_TAG or bool(b.get("extra", {}).get("ignore", 0)) for b in boxes], bool)
        det = dets.get(entry["ID"], {"ID": entry["ID"]})
        dt, scores = _detections(det, source)
        width, height = _size(entry)
        if width is None:
            width, height = _size(det)
        if width is None and len(dt):
            raise CrowdHumanInputError(
                f"{source}: image {entry['ID']!r} has detections but no 'width'/'height' in either file"
            )
        images.append(CrowdHumanImage(xywh_corners([b["fbox"] for b in boxes]), ignore, dt, scores, width, height))
    return images


# ----------------------------------------------------------------------------------------------
# Per-image work: one overlap computation serves AP/MR matching and every JI threshold
# ----------------------------------------------------------------------------------------------

def _greedy_flags(iou: np.ndarray, dt_in_region: np.ndarray) -> np.ndarray:
    """(M,) 1 TP / 0 FP / -1 dropped of score-ordered detections (compare_caltech).

    ``iou`` (M, T) is against the targets (file order); each detection takes the unmatched
    target of highest IoU > 0.5 (ties: the first), else is dropped inside an ignore box."""
    flags = np.where(dt_in_region, -1, 0)
    rows, cols = np.nonzero(iou > IOU_THRESHOLD)
    if len(rows) == 0:
        return flags
    order = np.lexsort((cols, -iou[rows, cols], rows))
    used = set()
    current, done = -1, False
    for d, t in zip(rows[order].tolist(), cols[order].tolist()):
        if d != current:
            current, done = d, False
        if done or t in used:
            continue
        used.add(t)
        flags[d] = 1
        done = True
    return flags


def _ji_counts(iou: np.ndarray, scores: np.ndarray, dt_in_region: np.ndarray, tgt_in_region: np.ndarray) -> np.ndarray:
    """(len(JI_SCORE_THRESHOLDS), 3) (k, m, n) of compute_JI_with_ignore at each threshold.

    Detections are in descending score order, so each threshold keeps a prefix of them; the
    maximum-weight matching is the assignment of the edge weights (IoU > 0.5, else 0), computed
    once per distinct set of detections with an edge."""
    kept = np.searchsorted(-scores, -np.asarray(JI_SCORE_THRESHOLDS), side="left")
    weights = np.where(iou > IOU_THRESHOLD, iou, 0.0)
    edge_rows = np.flatnonzero(weights.any(axis=1))
    with_edges = np.searchsorted(edge_rows, kept)
    matched = np.zeros((len(kept), 3), dtype=np.int64)  # k, matched dets in a region, matched targets in one
    for q in np.unique(with_edges[with_edges > 0]).tolist():
        rows = edge_rows[:q]
        sub = weights[rows]
        cols = np.flatnonzero(sub.any(axis=0))
        sub = sub[:, cols]
        edges = sub > 0
        if np.count_nonzero(edges) == len(rows) == len(cols):
            r, c = np.nonzero(edges)  # no two edges share a box: all of them
        else:
            r, c = linear_sum_assignment(sub, maximize=True)
            r, c = r[edges[r, c]], c[edges[r, c]]
        matched[with_edges == q] = (len(r), np.count_nonzero(dt_in_region[rows[r]]),
                                    np.count_nonzero(tgt_in_region[cols[c]]))
    in_region_before = np.concatenate(([0], np.cumsum(dt_in_region)))
    k = matched[:, 0]
    n = kept - (in_region_before[kept] - matched[:, 1])
    m = iou.shape[1] - (np.count_nonzero(tgt_in_region) - matched[:, 2])
    return np.stack([k, m, n], axis=1)


def _image_results(image: CrowdHumanImage, ji: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Sorted scores (M,), their TP flags (M,) and (with ``ji``) the JI counts of one image."""
    im = image.clipped()
    order = np.argsort(-im.scores, kind="stable")
    dt, scores = im.dt[order], im.scores[order]
    targets, regions = im.gt[~im.ignore], im.gt[im.ignore]
    iou = iou_matrix(dt, targets)
    dt_in_region = _inside_regions(dt, regions)
    flags = _greedy_flags(iou, dt_in_region)
    if not ji:
        return scores, flags, None
    return scores, flags, _ji_counts(iou, scores, dt_in_region, _inside_regions(targets, regions))


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def average_precision(tp: np.ndarray, num_targets: int) -> float:
    """database.py eval_AP: trapezoids between consecutive (recall, precision) points."""
    if len(tp) == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.cumsum(tp) / np.float64(num_targets)
    precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    return float(np.sum((recall[1:] - recall[:-1]) * ((precision[1:] + precision[:-1]) / 2)))


def crowdhuman_miss_rate(tp: np.ndarray, num_targets: int, num_images: int) -> float:
    """database.py eval_MR (CALTECH_-2): see the module doc."""
    if len(tp) == 0:
        return 1.0
    fppi = np.cumsum(1 - tp) / num_images
    with np.errstate(divide="ignore", invalid="ignore"):
        miss = 1.0 - np.cumsum(tp) / np.float64(num_targets)
        first = np.searchsorted(fppi, np.asarray(CROWDHUMAN_MR_REFS), side="left")
        return float(np.exp(np.mean(np.log(miss[np.minimum(first, len(fppi) - 1)]))))


def jaccard_index(counts: np.ndarray) -> float:
    """gather + max: ``counts`` (images, thresholds, 3) of (k, m, n); see the module doc."""
    if counts.size == 0:
        return 0.0
    k, m, n = counts[..., 0], counts[..., 1], counts[..., 2]
    valid = ((m != 0) | (n != 0)).sum(axis=0)
    ratios = (k / (m + n - k + EPS)).sum(axis=0)
    means = [r / v for r, v in zip(ratios.tolist(), valid.tolist()) if v]
    return max(means) if means else 0.0


def crowdhuman_metrics(images: Sequence[CrowdHumanImage], ji: bool = True) -> Dict[str, float]:
    """{"AP", "MR", "JI"} as fractions (see the module doc); without ``ji`` only AP and MR (JI
    takes most of the time)."""
    results = [_image_results(im, ji) for im in images]
    scores = np.concatenate([r[0] for r in results]) if results else np.zeros(0)
    flags = np.concatenate([r[1] for r in results]) if results else np.zeros(0, dtype=np.int64)
    counted = flags >= 0
    tp = flags[counted][np.argsort(-scores[counted], kind="stable")].astype(np.float64)
    num_targets = int(sum(int((~im.ignore).sum()) for im in images))
    metrics = {"AP": average_precision(tp, num_targets), "MR": crowdhuman_miss_rate(tp, num_targets, len(images))}
    if ji:
        counts = np.stack([r[2] for r in results]) if results else np.zeros((0, len(JI_SCORE_THRESHOLDS), 3))
        metrics["JI"] = jaccard_index(counts)
    return metrics

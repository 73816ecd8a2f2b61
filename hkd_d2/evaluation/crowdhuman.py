"""CrowdHuman metrics (AP@0.5, MR^-2, JI) as the CrowdHuman / CrowdDet evaluation code computes them.

Sources (CrowdDet, ``lib/evaluate``): ``APMRToolkits/image.py`` (``Image.load``: full boxes
``fbox``, tag ``person`` -> 1, ``mask`` or ``extra.ignore`` -> -1; ``clip_all_boader``;
``compare_caltech``), ``APMRToolkits/database.py`` (``eval_AP``, ``eval_MR``) and
``compute_JI.py`` / ``JIToolkits`` (``compute_JI_with_ignore``, ``gather``). Boxes are
``[x0, y0, x1, y1]`` with ``x1 = x + w``; overlaps carry the scripts' ``eps = 1e-6``.

* Matching (AP and MR), per image: detections in score order take the unmatched target of
  highest IoU ``> 0.5``; failing that, one that overlaps an ignore box by intersection over
  detection area ``> 0.5`` is dropped; the others are false positives.
* AP: trapezoidal area under the precision/recall points of the score-ordered list (no point
  added at recall 0).
* MR^-2: at each FPPI reference ``[0.0100 0.0178 0.0316 0.0562 0.1 0.1778 0.3162 0.5623 1]`` the
  miss rate of the first detection whose FPPI is ``>=`` it (the last one if none), then
  ``exp(mean(log(.)))`` unclamped.
* JI: for each score threshold ``0.0, 0.1, ..., 0.9`` and image, a maximum-weight matching of
  the kept detections (score ``>`` threshold) to the targets on IoU ``> 0.5``; unmatched
  detections / targets inside an ignore box (IoA ``> 0.5``) are not counted; the image's
  ``k / (m + n - k + eps)``, averaged over images with ``m`` or ``n`` non-zero; JI is the best
  threshold's mean.

Where the scripts crash (no detections at all) MR is 1.0 and AP 0.0.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "CrowdHumanImage",
    "CROWDHUMAN_MR_REFS",
    "images_from_odgt",
    "match_image",
    "average_precision",
    "crowdhuman_miss_rate",
    "jaccard_index",
    "crowdhuman_metrics",
]

EPS = 1e-6
IOU_THRESHOLD = 0.5
# database.py eval_MR, "CALTECH_-2"
CROWDHUMAN_MR_REFS = (0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
# compute_JI.py: score thresholds 0.0 .. 0.9
JI_SCORE_THRESHOLDS = tuple(0.1 * i for i in range(10))
TARGET_TAG = "person"


@dataclass
class CrowdHumanImage:
    """One image: gt (N, 4) xyxy with ignore (N,) bool, detections (M, 4) xyxy with scores (M,)."""

    gt: np.ndarray
    ignore: np.ndarray
    dt: np.ndarray
    scores: np.ndarray
    width: float
    height: float

    def clipped(self) -> "CrowdHumanImage":
        """Boxes clipped as ``clip_all_boader``: x0 to [0, W-1], x1 to [0, W] (same for y)."""
        return CrowdHumanImage(_clip(self.gt, self.width, self.height), self.ignore,
                               _clip(self.dt, self.width, self.height), self.scores, self.width, self.height)


def _clip(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)
    return out


def _xyxy(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    a[:, 2:] += a[:, :2]
    return a


def _inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(0, iw) * np.maximum(0, ih)


def _area(a: np.ndarray) -> np.ndarray:
    return (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes, ``inter / (area_a + area_b - inter + eps)``."""
    inter = _inter(a, b)
    return inter / (_area(a)[:, None] + _area(b)[None, :] - inter + EPS)


def ioa_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over the area of ``a`` (clamped at 0) plus eps."""
    area = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    return _inter(a, b) / (area[:, None] + EPS)


def images_from_odgt(gt_entries: Sequence[Mapping[str, Any]], dt_entries: Sequence[Mapping[str, Any]]) -> List[CrowdHumanImage]:
    """Images of parsed ``.odgt`` ground truth (``gtboxes``) and detections (``dtboxes`` with
    ``box``, ``score``; matched by ``ID``), in ground-truth order. Image sizes come from the
    detection entries' ``width``/``height`` as in the scripts (else the ground truth's)."""
    dets = {e["ID"]: e for e in dt_entries}
    images = []
    for entry in gt_entries:
        boxes = entry.get("gtboxes", [])
        ignore = np.array([b["tag"] != TARGET_TAG or bool(b.get("extra", {}).get("ignore", 0)) for b in boxes], bool)
        det = dets.get(entry["ID"], {})
        dtboxes = det.get("dtboxes", [])
        images.append(CrowdHumanImage(
            gt=_xyxy([b["fbox"] for b in boxes]), ignore=ignore,
            dt=_xyxy([d["box"] for d in dtboxes]), scores=np.array([d["score"] for d in dtboxes], np.float64),
            width=det.get("width", entry.get("width")), height=det.get("height", entry.get("height")),
        ))
    return images


def match_image(image: CrowdHumanImage, threshold: float = IOU_THRESHOLD) -> List[Tuple[float, int]]:
    """(score, 1 = TP / 0 = FP) of the counted detections of one clipped image (compare_caltech)."""
    order = np.argsort(-image.scores, kind="stable")
    dt, scores = image.dt[order], image.scores[order]
    gt_order = np.argsort(image.ignore, kind="stable")  # targets first
    gt, ignore = image.gt[gt_order], image.ignore[gt_order]
    iou, ioa = iou_matrix(dt, gt), ioa_matrix(dt, gt)
    matched = np.zeros(len(gt), dtype=bool)
    out = []
    for i in range(len(dt)):
        best, best_overlap = -1, threshold
        for j in range(len(gt)):
            if matched[j]:
                continue
            if not ignore[j]:
                if iou[i, j] > best_overlap:
                    best, best_overlap = j, iou[i, j]
            elif best >= 0:
                break
            elif ioa[i, j] > threshold:
                best = j
        if best < 0:
            out.append((float(scores[i]), 0))
        elif not ignore[best]:
            matched[best] = True
            out.append((float(scores[i]), 1))
    return out


def _score_list(images: Sequence[CrowdHumanImage]) -> Tuple[np.ndarray, int, int]:
    """(K,) TP flags of all counted detections in descending score order, #targets, #images."""
    pairs = [p for image in images for p in match_image(image.clipped())]
    order = np.argsort(-np.array([s for s, _ in pairs], np.float64), kind="stable")
    tp = np.array([pairs[i][1] for i in order], dtype=np.float64)
    return tp, int(sum(int((~im.ignore).sum()) for im in images)), len(images)


def average_precision(tp: np.ndarray, num_targets: int) -> float:
    """database.py eval_AP: trapezoids between consecutive (recall, precision) points."""
    if len(tp) == 0:
        return 0.0
    recall = np.cumsum(tp) / num_targets
    precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    return float(np.sum((recall[1:] - recall[:-1]) * (precision[1:] + precision[:-1]) / 2))


def crowdhuman_miss_rate(tp: np.ndarray, num_targets: int, num_images: int) -> float:
    """database.py eval_MR (CALTECH_-2): see the module doc."""
    if len(tp) == 0:
        return 1.0
    fppi = np.cumsum(1 - tp) / num_images
    miss = 1.0 - np.cumsum(tp) / num_targets
    first = np.searchsorted(fppi, np.asarray(CROWDHUMAN_MR_REFS), side="left")
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(miss[np.minimum(first, len(fppi) - 1)]))))


def _max_weight_matches(iou: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Rows / columns of a maximum-weight matching over the edges with IoU > threshold."""
    if iou.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    weights = np.where(iou > threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = weights[rows, cols] > 0
    return rows[keep], cols[keep]


def _image_ji_counts(image: CrowdHumanImage, score_threshold: float) -> Tuple[int, int, int]:
    """(k, m, n) of compute_JI_with_ignore for one clipped image."""
    dt = image.dt[image.scores > score_threshold]
    targets, regions = image.gt[~image.ignore], image.gt[image.ignore]
    rows, cols = _max_weight_matches(iou_matrix(dt, targets), IOU_THRESHOLD)

    def inside_regions(boxes: np.ndarray) -> int:
        if len(regions) == 0 or len(boxes) == 0:
            return 0
        return int((ioa_matrix(boxes, regions).max(axis=1) > IOU_THRESHOLD).sum())

    free_dt = np.setdiff1d(np.arange(len(dt)), rows)
    free_gt = np.setdiff1d(np.arange(len(targets)), cols)
    k = len(rows)
    return k, len(targets) - inside_regions(targets[free_gt]), len(dt) - inside_regions(dt[free_dt])


def jaccard_index(images: Sequence[CrowdHumanImage]) -> float:
    """compute_JI.py: the best mean per-image ``k / (m + n - k + eps)`` over the score thresholds."""
    clipped = [im.clipped() for im in images]
    best = 0.0
    for threshold in JI_SCORE_THRESHOLDS:
        counts = [_image_ji_counts(im, threshold) for im in clipped]
        valid = sum(1 for _, m, n in counts if m or n)
        if valid:
            best = max(best, sum(k / (m + n - k + EPS) for k, m, n in counts) / valid)
    return best


def crowdhuman_metrics(images: Sequence[CrowdHumanImage]) -> Dict[str, float]:
    """{"AP", "MR", "JI"} as fractions."""
    tp, num_targets, num_images = _score_list(images)
    return {
        "AP": average_precision(tp, num_targets),
        "MR": crowdhuman_miss_rate(tp, num_targets, num_images),
        "JI": jaccard_index(images),
    }

"""Reading and validating miss-rate inputs: ground truth and detections as flat arrays.

Sources: COCO-style ground-truth JSON (with ignore / height / vis_ratio fields), COCO results
lists, Detectron2-record annotations, the toolbox's ``gt-*.mat`` / ``dt-*.mat`` cell arrays, and
ECP label / detection folders. Malformed input raises :class:`MissRateInputError` naming the
file and the entry at fault.
"""
import math
from collections import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...reading import read_json, read_mat
from .protocols import INF, Protocol, get_protocol

__all__ = ["MissRateInputError", "GroundTruth", "Detections", "load_ground_truth", "load_detections"]

class MissRateInputError(ValueError):
    """Malformed ground truth or detections; the message names the file / image at fault."""


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
        corners: (N, 4) float64 ``[x0, y0, x1, y1]`` as the source gives them (ECP), after the
            protocol's clip window; default ``x + w`` of ``boxes``.
    """

    image_ids: List[Any]
    image_index: np.ndarray
    boxes: np.ndarray
    ignore: np.ndarray
    height: np.ndarray
    vis: np.ndarray
    final: bool = False
    source: str = "<ground truth>"
    ioa: Optional[np.ndarray] = None
    occlusion: Optional[np.ndarray] = None
    truncation: Optional[np.ndarray] = None
    corners: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        """Defaults of the optional per-box arrays: ``ioa`` (N,) bool, ignored boxes are regions
        overlapped by intersection over detection area (else IoU), all True; ``occlusion`` /
        ``truncation`` (N,) float64 levels in percent, all 0; ``corners`` from ``boxes``."""
        n = len(self.boxes)
        if self.corners is None:
            self.corners = xywh_corners(self.boxes)
        if self.ioa is None:
            self.ioa = np.ones(n, dtype=bool)
        if self.occlusion is None:
            self.occlusion = np.zeros(n)
        if self.truncation is None:
            self.truncation = np.zeros(n)

    @classmethod
    def from_annotations(
        cls,
        image_ids: Sequence[Any],
        annotations: Sequence[Mapping[str, Any]],
        protocol: Union[str, Protocol],
        source: str = "<ground truth>",
    ) -> "GroundTruth":
        """Build from COCO-style / Detectron2-record annotations (each with an ``image_id``).

        Uses ``bbox``, and when present ``corners`` (the source's ``[x0, y0, x1, y1]``),
        ``ignore`` (else COCO's ``iscrowd``), ``height``, ``vis_ratio`` / ``vis_bbox`` (read by
        the protocol's visibility rule), ``label``, ``category_id``, ``occlusion`` and
        ``truncation`` (percent). Labels other than the protocol's pedestrian / ignore labels are
        removed, as dbEval.m does. An image id listed twice is refused.
        """
        protocol = get_protocol(protocol)
        index_of = _index_of(image_ids, source)
        anns = [a for a in _checked_entries(annotations, "annotation", source) if _scored(a, protocol)]
        images = []
        for a in anns:
            if a.get("image_id") not in index_of:
                raise MissRateInputError(f"{source}: annotation for unknown image id {a.get('image_id')!r}")
            images.append(index_of[a["image_id"]])
        boxes, corners = _boxes_and_corners(anns, "annotation", source)
        if protocol.clip_window is not None:
            corners = clip_corners(corners, protocol.clip_window)
            boxes = corners_xywh(corners)
            heights = boxes[:, 3].tolist()
        else:
            heights = [a["height"] if "height" in a else box[3] for a, box in zip(anns, boxes)]
        labels = [a.get("label") for a in anns]
        flags = [bool(a.get("ignore", a.get("iscrowd", 0))) or label in protocol.ignore_labels for a, label in zip(anns, labels)]
        visibility = VISIBILITY_RULES[protocol.visibility]
        regions = protocol.ioa_ignore_labels
        return cls(
            image_ids=list(image_ids),
            image_index=np.asarray(images, dtype=np.int64),
            boxes=boxes,
            ignore=np.asarray(flags, dtype=bool),
            height=np.asarray(heights, dtype=np.float64),
            vis=np.asarray([visibility(a, box) for a, box in zip(anns, boxes)], dtype=np.float64),
            source=source,
            ioa=None if regions is None else np.asarray([label in regions for label in labels], dtype=bool),
            occlusion=np.asarray([a.get("occlusion", 0) for a in anns], dtype=np.float64),
            truncation=np.asarray([a.get("truncation", 0) for a in anns], dtype=np.float64),
            corners=corners,
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
        corners: (M, 4) float64 ``[x0, y0, x1, y1]`` as the source gives them (the model's
            boxes, ECP files), after the protocol's clip window; default ``x + w`` of ``boxes``.
    """

    image_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    final: bool = False
    corners: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.corners is None:
            self.corners = xywh_corners(self.boxes)

    @classmethod
    def from_results(
        cls,
        results: Sequence[Mapping[str, Any]],
        gt: GroundTruth,
        protocol: Union[str, Protocol],
        source: str = "<detections>",
    ) -> "Detections":
        """Build from a COCO results list (``image_id``, ``bbox`` [x, y, w, h], ``score``; when
        present, ``corners`` [x0, y0, x1, y1] as the source gives them)."""
        protocol = get_protocol(protocol)
        index_of = {img: i for i, img in enumerate(gt.image_ids)}
        results = _checked_entries(results, "detection", source)
        category = protocol.category_id
        if category is not None:
            results = [r for r in results if r.get("category_id", category) == category]
        try:
            images = [index_of[r["image_id"]] for r in results]
            boxes, corners = _boxes_and_corners(results, "detection", source)
            scores = np.asarray([r["score"] for r in results], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            _raise_bad_result(results, index_of, source)
        bad = ~np.isfinite(scores)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MissRateInputError(
                f"{source}: detection #{i} of image id {results[i]['image_id']!r} has a "
                f"non-finite score: {results[i]['score']}"
            )
        if protocol.clip_window is not None:
            corners = clip_corners(corners, protocol.clip_window)
            boxes = corners_xywh(corners)
        return cls(np.asarray(images, dtype=np.int64), boxes, scores, corners=corners)

    @classmethod
    def from_toolbox_cells(cls, cells: Sequence[np.ndarray], source: str = "<dt cells>") -> "Detections":
        """Build from the toolbox's per-image ``[x y w h score]`` arrays (already standardised)."""
        image_index, rows = _stack_cells(cells, 5, source)
        return cls(image_index, rows[:, :4].copy(), rows[:, 4].copy(), final=True)


def _checked_box(bbox: Any, source: str, image_id: Any) -> List[float]:
    try:
        box = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise MissRateInputError(f"{source}: image id {image_id!r}: bad bbox {bbox!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise MissRateInputError(f"{source}: image id {image_id!r}: bad bbox {bbox!r}")
    return box


def _checked_entries(entries: Any, kind: str, source: str) -> List[Mapping[str, Any]]:
    """``entries`` as a list, each a JSON object (else an error naming the entry)."""
    entries = list(entries)
    for i, entry in enumerate(entries):
        if not isinstance(entry, (dict, abc.Mapping)):
            raise MissRateInputError(f"{source}: {kind} #{i} is not an object: {entry!r}")
    return entries


def _index_of(image_ids: Sequence[Any], source: str) -> Dict[Any, int]:
    """{image id: position}; an id listed twice is refused (it would count twice in FPPI)."""
    index_of: Dict[Any, int] = {}
    for i, image_id in enumerate(image_ids):
        if image_id in index_of:
            raise MissRateInputError(f"{source}: image id {image_id!r} is listed twice")
        index_of[image_id] = i
    return index_of


def _box_array(entries: Sequence[Mapping[str, Any]], key: str, kind: str, source: str) -> np.ndarray:
    """(N, 4) float64 of the entries' ``key`` lists; any that is not 4 finite numbers is named."""
    values = [e.get(key) for e in entries]
    try:
        boxes = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        boxes = None
    if boxes is not None and len(values) == 0:
        return boxes.reshape(0, 4)
    if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        for i, (value, entry) in enumerate(zip(values, entries)):
            try:
                _checked_box(value, source, entry.get("image_id"))
            except MissRateInputError as e:
                raise MissRateInputError(f"{e.args[0]} ({kind} #{i}; expected 4 finite numbers)") from None
        raise MissRateInputError(f"{source}: malformed {kind} boxes")
    return boxes


def xywh_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) ``[x, y, x + w, y + h]`` of (N, 4) xywh boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def corners_xywh(corners: np.ndarray) -> np.ndarray:
    """(N, 4) ``[x0, y0, x1 - x0, y1 - y0]`` of (N, 4) corners (negative where x1 < x0)."""
    return np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)


def clip_corners(corners: np.ndarray, window: Tuple[float, float, float, float]) -> np.ndarray:
    """(N, 4) corners each clipped to ``window`` ``[x0, y0, x1, y1]`` on its own (ECP's
    preprocess: ``x0 = max(0, x0)``, ``x1 = min(W, x1)``, ...), so a box outside keeps x1 < x0."""
    return np.stack([np.maximum(corners[:, 0], window[0]), np.maximum(corners[:, 1], window[1]),
                     np.minimum(corners[:, 2], window[2]), np.minimum(corners[:, 3], window[3])], axis=1)


def _boxes_and_corners(entries: Sequence[Mapping[str, Any]], kind: str, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 4) xywh ``bbox`` and (N, 4) corners: each entry's ``corners`` where given, else ``x + w``."""
    boxes = _box_array(entries, "bbox", kind, source)
    corners = xywh_corners(boxes)
    given = [i for i, e in enumerate(entries) if "corners" in e]
    if given:
        corners[given] = _box_array([entries[i] for i in given], "corners", kind, source)
    return boxes, corners


def _scored(ann: Mapping[str, Any], protocol: Protocol) -> bool:
    """Whether an annotation takes part at all (category and label filters)."""
    category = protocol.category_id
    if category is not None and ann.get("category_id", category) != category:
        return False
    keep_labels = set(protocol.labels) | set(protocol.ignore_labels)
    return not (keep_labels and ann.get("label") is not None and ann["label"] not in keep_labels)


def _ratio_visibility(ann: Mapping[str, Any], box: np.ndarray) -> float:
    """The record's ``vis_ratio``, else visible / full area from ``vis_bbox``, else 1."""
    if "vis_ratio" in ann:
        return ann["vis_ratio"]
    vis_box = ann.get("vis_bbox")
    if vis_box is None or box[2] * box[3] <= 0:
        return 1.0
    return float(vis_box[2]) * float(vis_box[3]) / float(box[2] * box[3])


def _dbeval_visibility(ann: Mapping[str, Any], box: np.ndarray) -> float:
    """dbEval.m filterGtFun: inf where no visible box was annotated (the record is fully visible),
    else visible / full area of the boxes (a visible box equal to the full box gives 1)."""
    ratio = _ratio_visibility(ann, box)
    vis_box = ann.get("vis_bbox")
    if ratio >= 1.0:
        return INF
    if vis_box is None or box[2] * box[3] <= 0:
        return ratio
    return float(vis_box[2]) * float(vis_box[3]) / float(box[2] * box[3])


# Protocol.visibility -> rule(annotation, its (4,) xywh box) -> visible fraction
VISIBILITY_RULES: Dict[str, Callable[[Mapping[str, Any], np.ndarray], float]] = {
    "ratio": _ratio_visibility,
    "dbeval": _dbeval_visibility,
}


def _raise_bad_result(results: Sequence[Any], index_of: Mapping[Any, int], source: str) -> None:
    for i, r in enumerate(results):
        if not isinstance(r, (dict, abc.Mapping)) or not {"image_id", "bbox", "score"} <= set(r):
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


def _read_mat_cells(path: Path, variable: str, what: str) -> Sequence[np.ndarray]:
    data = read_mat(path, what, MissRateInputError)
    if variable not in data:
        raise MissRateInputError(f"{path}: no variable {variable!r} (found {[k for k in data if not k.startswith('__')]})")
    return list(np.asarray(data[variable], dtype=object).ravel())


@dataclass(frozen=True)
class FolderReader:
    """Readers of one protocol's folders of per-frame files (ground truth, detections)."""

    ground_truth: Callable[[Path, Protocol], "GroundTruth"]
    detections: Callable[[Path, "GroundTruth", Protocol], "Detections"]


# protocol.overlap -> readers of its folders; the data readers register theirs (hkd_d2.data.ecp),
# since they import this package and not the other way round.
FOLDER_READERS: Dict[str, FolderReader] = {}


def _folder_reader(path: Path, protocol: Protocol) -> FolderReader:
    if protocol.overlap not in FOLDER_READERS:
        raise MissRateInputError(f"{path}: is a directory; folders are read only with the protocols "
                                 f"{sorted(FOLDER_READERS)} (got {protocol.name!r})")
    return FOLDER_READERS[protocol.overlap]


def load_ground_truth(path: Union[str, Path], protocol: Union[str, Protocol] = "citypersons") -> GroundTruth:
    """Read a COCO-style ground-truth JSON (with ignore / height / vis_ratio fields), a toolbox
    ``.mat`` holding a cell array ``gt`` of ``[x y w h ignore]`` rows (used as given), or a
    folder of ECP label files (``<city>/<frame>.json``; protocol ``ecp``)."""
    path = Path(path)
    if path.is_dir():
        protocol = get_protocol(protocol)
        return _folder_reader(path, protocol).ground_truth(path, protocol)
    if path.suffix == ".mat":
        return GroundTruth.from_toolbox_cells(_read_mat_cells(path, "gt", "ground truth"), source=str(path))
    data = read_json(path, "ground truth", MissRateInputError)
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
    """Read a COCO results JSON, a toolbox ``.mat`` cell array ``dt`` of ``[x y w h score]``, or a
    folder of ECP detection files (``<frame>.json``, one per frame; protocol ``ecp``)."""
    path = Path(path)
    if path.is_dir():
        protocol = get_protocol(protocol)
        return _folder_reader(path, protocol).detections(path, gt, protocol)
    if path.suffix == ".mat":
        cells = _read_mat_cells(path, "dt", "detections")
        if len(cells) != gt.num_images:
            raise MissRateInputError(f"{path}: {len(cells)} cells but the ground truth has {gt.num_images} images")
        return Detections.from_toolbox_cells(cells, source=str(path))
    data = read_json(path, "detections", MissRateInputError)
    if not isinstance(data, list):
        raise MissRateInputError(f"{path}: expected a COCO results list of detections")
    return Detections.from_results(data, gt, protocol, source=str(path))


"""The generic pedestrian annotation format: COCO-style JSON with ignore flags and visible boxes.

This is the format of the official CityPersons ``val_gt.json`` and the one every prepare
script under ``datasets/`` converts to. One JSON file looks like::

    {"images": [{"id": 1, "file_name": "city/x.png" (or "im_name": "x.png"), "height": H, "width": W}],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "ignore": 0,
                      "bbox": [x, y, w, h], "vis_bbox": [x, y, w, h], "height": h,
                      "vis_ratio": r, "label": "pedestrian"}],
     "categories": [{"id": 1, "name": "person"}]}

``label`` is our addition (the source label, see the record format in the project contract);
when absent it is taken from the category name. This module is also the one home of the
record/annotation format itself (:func:`make_annotation`); files are read through
:mod:`hkd_d2.reading`.
"""
import json
import logging
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from detectron2.structures import BoxMode
from PIL import Image

from ..atomic import atomic_output
from ..reading import read_json
from ..evaluation.miss_rate.protocols import PERSON_CATEGORY_NAMES

__all__ = [
    "PedestrianDataError",
    "make_annotation",
    "drop_degenerate",
    "drop_degenerate_boxes",
    "image_size",
    "resolve_image",
    "load_pedestrian_json",
    "records_to_coco",
    "save_pedestrian_json",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
# The single category of every pedestrian dataset, as the COCO-style JSON names it.
PERSON_CATEGORY = {"id": 1, "name": "person"}
# Labels whose boxes are crowds rather than single people (COCO "iscrowd").
CROWD_LABELS = frozenset({"people group", "people"})


class PedestrianDataError(ValueError):
    """A malformed annotation/image file; the message names the file."""


def make_annotation(
    bbox: Sequence[float],
    vis_bbox: Optional[Sequence[float]],
    ignore: int,
    label: str,
    vis_ratio: Optional[float] = None,
    category_id: int = 0,
) -> Dict:
    """One record annotation in the project's format (contract: "Dataset records").

    Args:
        bbox, vis_bbox: full and visible box, XYWH absolute; ``vis_bbox=None`` means fully visible.
        ignore: 1 for ignore regions / not-a-clean-pedestrian boxes, else 0.
        label: the source's label string.
        vis_ratio: visible fraction as the source gives it; computed from the boxes when None.
        category_id: contiguous class id (0: the person class of single-class data).

    Raises ValueError for NaN/inf coordinates.
    """
    bbox = [float(v) for v in bbox]
    vis_bbox = list(bbox) if vis_bbox is None else [float(v) for v in vis_bbox]
    if not all(math.isfinite(v) for v in bbox + vis_bbox):
        raise ValueError(f"non-finite coordinates in bbox {bbox} / vis_bbox {vis_bbox}")
    if vis_ratio is None:
        area = bbox[2] * bbox[3]
        vis_ratio = vis_bbox[2] * vis_bbox[3] / area if area > 0 else 0.0
    return {
        "bbox": bbox,
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": int(category_id),
        "vis_bbox": vis_bbox,
        "vis_ratio": float(vis_ratio),
        "ignore": int(bool(ignore)),
        "label": str(label),
    }


def _has_area(annotation: Dict) -> bool:
    return annotation["bbox"][2] > 0 and annotation["bbox"][3] > 0


def drop_degenerate(annotations: List[Dict], source: PathLike) -> List[Dict]:
    """Remove annotations whose full box has w <= 0 or h <= 0, logging how many (per source)."""
    kept = [a for a in annotations if _has_area(a)]
    if len(kept) < len(annotations):
        logger.info("%s: dropped %d degenerate boxes (w<=0 or h<=0)", source, len(annotations) - len(kept))
    return kept


def drop_degenerate_boxes(records: List[Dict], source: PathLike) -> List[Dict]:
    """Remove every record's degenerate boxes (see :func:`drop_degenerate`), logging one total for ``source``."""
    dropped = 0
    for rec in records:
        kept = [a for a in rec["annotations"] if _has_area(a)]
        dropped += len(rec["annotations"]) - len(kept)
        rec["annotations"] = kept
    if dropped:
        logger.info("%s: dropped %d degenerate boxes (w<=0 or h<=0) in %d images", source, dropped, len(records))
    return records


def image_size(file_name: PathLike) -> tuple:
    """(height, width) of an image, reading only its header."""
    try:
        with Image.open(file_name) as im:
            width, height = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image {file_name} not found") from None
    except OSError as e:
        raise PedestrianDataError(f"cannot read image {file_name}: {e}") from e
    return height, width


def resolve_image(image_root: PathLike, name: str) -> Path:
    """Absolute path of image ``name`` under ``image_root``.

    ``name`` is tried as given, then inside a folder named after its prefix before the first
    ``_`` (Cityscapes' ``leftImg8bit/<split>/<city>/<city>_..._leftImg8bit.png`` layout, used by
    ``val_gt.json``'s ``im_name``). Raises FileNotFoundError naming the first candidate.
    """
    root = Path(image_root).resolve()
    candidates = [root / name, root / name.split("_", 1)[0] / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"image {candidates[0]} (listed in the annotations) not found on disk")


def _read_json(json_file: PathLike) -> Dict:
    data = read_json(json_file, "annotation file", PedestrianDataError)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise PedestrianDataError(f"{json_file}: expected a COCO-style object with an 'images' list")
    if not isinstance(data.get("annotations", []), list):
        raise PedestrianDataError(f"{json_file}: 'annotations' must be a list")
    return data


def _annotation_from_json(ann: Dict, labels: Dict[int, str], json_file: PathLike) -> Dict:
    try:
        bbox = ann["bbox"]
        if len(bbox) != 4:
            raise ValueError("bbox must have 4 numbers")
        ignore = _ignore_flag(ann)
        label = ann.get("label", labels.get(ann.get("category_id"), PERSON_CATEGORY["name"]))
        return make_annotation(bbox, ann.get("vis_bbox"), ignore, label, ann.get("vis_ratio"))
    except (KeyError, TypeError, ValueError) as e:
        raise PedestrianDataError(f"{json_file}: malformed annotation {ann.get('id')}: {e!r}") from e


def _kept_category_ids(data: Dict, json_file: PathLike, categories: Optional[Sequence[Union[str, int]]]):
    """Ids of the file's categories that are pedestrians: those named (by name or id) in
    ``categories`` (default :data:`PERSON_CATEGORY_NAMES`). None = keep every annotation (the
    file lists no categories). Raises naming the file when annotations exist but none is kept."""
    listed = [c for c in data.get("categories", []) if isinstance(c, dict) and "id" in c]
    if not listed:
        return None
    wanted = {str(c) for c in (categories or PERSON_CATEGORY_NAMES)}
    kept = {c["id"] for c in listed if str(c["id"]) in wanted or str(c.get("name")) in wanted}
    if not kept and data.get("annotations"):
        found = [(c["id"], c.get("name")) for c in listed]
        raise PedestrianDataError(
            f"{json_file}: no category is a pedestrian: categories (id, name) {found}, kept {sorted(wanted)}; "
            "name the pedestrian categories with categories= (register_pedestrian_dataset) or "
            "DATASETS.PEDESTRIAN_JSON.CATEGORIES"
        )
    return kept


def _ignore_flag(ann: Dict) -> int:
    """A JSON annotation's ignore flag: ``ignore`` when present, else COCO's ``iscrowd``, else 0."""
    return ann.get("ignore", ann.get("iscrowd", 0))


def _is_kept(ann: Dict, kept_ids) -> bool:
    """Pedestrian categories (and annotations naming none) are kept; other categories only as
    ignore regions (flagged ``ignore`` / ``iscrowd``), never as pedestrians."""
    if kept_ids is None or "category_id" not in ann or ann["category_id"] in kept_ids:
        return True
    return bool(_ignore_flag(ann))


def load_pedestrian_json(
    json_file: PathLike, image_root: PathLike, categories: Optional[Sequence[Union[str, int]]] = None
) -> List[Dict]:
    """Read a generic pedestrian JSON file into Detectron2 dataset dicts.

    Args:
        json_file: COCO-style file (see module doc). Images name their file with ``file_name``
            or ``im_name`` (relative to ``image_root``).
        image_root: folder the image names are relative to. Every image must exist.
        categories: names or ids of the file's pedestrian categories (default "person",
            "pedestrian"); annotations of other categories are dropped unless flagged ignore.

    Returns:
        records in the contract's format, in the file's image order; ``image_id`` is the
        JSON image id.
    """
    data = _read_json(json_file)
    labels = {c["id"]: c["name"] for c in data.get("categories", []) if "id" in c and "name" in c}
    kept_ids = _kept_category_ids(data, json_file, categories)
    images: Dict = {}
    for img in data["images"]:
        name = img.get("file_name", img.get("im_name")) if isinstance(img, dict) else None
        if name is None or "id" not in img:
            raise PedestrianDataError(f"{json_file}: image entry needs 'id' and 'file_name'/'im_name': {img!r}")
        if img["id"] in images:
            raise PedestrianDataError(
                f"{json_file}: duplicate image id {img['id']!r} ({images[img['id']][0]!r} and {name!r})"
            )
        images[img["id"]] = (name, img)
    anns_by_image: Dict[int, List[Dict]] = {}
    dropped = 0
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise PedestrianDataError(f"{json_file}: annotation without image_id: {ann!r}")
        if ann["image_id"] not in images:
            raise PedestrianDataError(
                f"{json_file}: annotation {ann.get('id')!r} refers to image id {ann['image_id']!r}, "
                "which is not in 'images'"
            )
        if not _is_kept(ann, kept_ids):
            dropped += 1
            continue
        anns_by_image.setdefault(ann["image_id"], []).append(
            _annotation_from_json(ann, labels, json_file)
        )
    records = []
    for name, img in images.values():
        path = resolve_image(image_root, name)
        if "height" in img and "width" in img:
            height, width = int(img["height"]), int(img["width"])
        else:
            height, width = image_size(path)
        records.append(
            {
                "file_name": str(path),
                "image_id": img["id"],
                "height": height,
                "width": width,
                "annotations": anns_by_image.get(img["id"], []),
            }
        )
    if dropped:
        logger.info("%s: dropped %d annotations of categories that are not pedestrians (kept ids %s)",
                    json_file, dropped, sorted(kept_ids))
    logger.info("Loaded %d images from %s", len(records), json_file)
    return drop_degenerate_boxes(records, json_file)


def records_to_coco(
    records: List[Dict], image_root: Optional[PathLike] = None, categories: Optional[Sequence[str]] = None
) -> Dict:
    """Dataset dicts -> the generic JSON object (ids renumbered from 1 in record order).

    ``file_name`` is written relative to ``image_root`` when given; ``im_name`` is its base name.
    ``categories`` names the classes of several-class records (``category_id`` 0, 1, ... become
    JSON ids 1, 2, ...); None: the one "person" category.
    """
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        name = rec["file_name"]
        if image_root is not None:
            name = os.path.relpath(name, image_root)
        images.append(
            {
                "id": image_id,
                "file_name": Path(name).as_posix(),
                "im_name": Path(name).name,
                "height": rec["height"],
                "width": rec["width"],
            }
        )
        for ann in rec["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": PERSON_CATEGORY["id"] + ann.get("category_id", 0),
                    "iscrowd": int(ann["label"] in CROWD_LABELS),
                    "ignore": ann["ignore"],
                    "bbox": ann["bbox"],
                    "vis_bbox": ann["vis_bbox"],
                    "height": ann["bbox"][3],
                    "vis_ratio": ann["vis_ratio"],
                    "label": ann["label"],
                }
            )
    listed = ([dict(PERSON_CATEGORY)] if categories is None else
              [{"id": PERSON_CATEGORY["id"] + i, "name": name} for i, name in enumerate(categories)])
    return {"images": images, "annotations": annotations, "categories": listed}


def save_pedestrian_json(
    records: List[Dict],
    json_file: PathLike,
    image_root: Optional[PathLike] = None,
    categories: Optional[Sequence[str]] = None,
) -> None:
    """Write ``records`` as a generic pedestrian JSON file (atomically); ``categories`` as in
    :func:`records_to_coco`."""
    data = records_to_coco(records, image_root, categories)
    with atomic_output(json_file) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f)
    logger.info("Wrote %d images, %d annotations to %s", len(data["images"]), len(data["annotations"]), json_file)

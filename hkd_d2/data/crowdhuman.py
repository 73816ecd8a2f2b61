"""CrowdHuman: ``.odgt`` annotation files (one JSON object per line).

On-disk layout (as distributed)::

    crowdhuman/annotation_train.odgt, annotation_val.odgt
    crowdhuman/Images/<ID>.jpg

One line per image: ``{"ID": ..., "gtboxes": [{"tag": "person" | "mask", "fbox": [x, y, w, h],
"vbox": [...], "hbox": [...], "extra": {"ignore": 0/1, "occ": 0/1, ...}, ...}]}``; our generator
adds ``"width"``/``"height"`` (the official files do not have them, so the image header is read).

Records: ``bbox`` is the full box (``fbox``), ``vis_bbox`` the visible box (``vbox``), ``hbox``
is kept; a ``person`` box is a clean target unless ``extra.ignore`` is set, ``mask`` boxes
(crowds, reflections, posters) are ignore regions (the CrowdHuman/CrowdDet evaluation's rule).
Every box is kept, those without area too: the evaluation counts them (a target no detection
can match is a miss); the training mapper leaves them out. Which box trains is
``DATASETS.TRAIN_BOX`` (:func:`with_training_box`).
"""
import json
from collections import abc
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from PIL import Image

from ..reading import gc_paused
from .pedestrian_json import PathLike, PedestrianDataError, make_annotation

__all__ = [
    "CROWDHUMAN_TARGET", "TRAINING_BOXES", "read_json_lines", "read_odgt", "load_crowdhuman", "with_training_box", "write_odgt",
]

CROWDHUMAN_TARGET = "person"
BOX_KEYS = ("fbox", "vbox")
# DATASETS.TRAIN_BOX -> the annotation field that becomes "bbox" in training
TRAINING_BOXES = {"full": "bbox", "visible": "vis_bbox"}


def _checked_box(box: Any, where: str, key: str) -> List[float]:
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4:
        raise PedestrianDataError(f"{where}: '{key}' must be 4 numbers [x, y, w, h], got {box!r}")
    return values


def read_json_lines(path: PathLike, what: str = "CrowdHuman annotation file") -> List[Tuple[str, Dict]]:
    """``(file:line, entry)`` of each non-empty line of an ``.odgt`` file, every entry an object
    with an ``ID``; a malformed line raises naming ``file:line``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise PedestrianDataError(f"{path}: not a text file (expected one JSON object per line)") from None
    entries = []
    with gc_paused():
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise PedestrianDataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(entry, abc.Mapping) or "ID" not in entry:
                raise PedestrianDataError(f"{where}: expected an object with an 'ID'")
            entries.append((where, entry))
    return entries


def read_odgt(path: PathLike) -> List[Dict]:
    """The image entries of an annotation ``.odgt`` file; a malformed line raises naming ``file:line``."""
    entries = []
    for where, entry in read_json_lines(path):
        if not isinstance(entry.get("gtboxes", []), list):
            raise PedestrianDataError(f"{where}: expected an object with 'ID' and a 'gtboxes' list")
        for k, box in enumerate(entry.get("gtboxes", [])):
            if not isinstance(box, abc.Mapping) or "tag" not in box:
                raise PedestrianDataError(f"{where}: gtboxes[{k}] is not an object with a 'tag'")
            for key in BOX_KEYS:
                _checked_box(box.get(key, box.get("fbox")), f"{where}: gtboxes[{k}]", key)
        entries.append(entry)
    return entries


def _annotation(box: Mapping[str, Any]) -> Dict:
    extra = box.get("extra", {})
    ignore = box["tag"] != CROWDHUMAN_TARGET or bool(extra.get("ignore", 0))
    fbox = [float(v) for v in box["fbox"]]
    ann = make_annotation(fbox, box.get("vbox", fbox), ignore, box["tag"])
    if "hbox" in box:
        ann["hbox"] = [float(v) for v in box["hbox"]]
    return ann


def load_crowdhuman(odgt: PathLike, image_root: PathLike, image_ext: str = ".jpg") -> List[Dict]:
    """Records of an ``.odgt`` file, images ``image_root/<ID><ext>``, ids 1..N in file order."""
    records = []
    for entry in read_odgt(odgt):
        file_name = Path(image_root) / f"{entry['ID']}{image_ext}"
        if "width" in entry and "height" in entry:
            width, height = entry["width"], entry["height"]
        else:
            with Image.open(file_name) as image:
                width, height = image.size
        anns = [_annotation(b) for b in entry.get("gtboxes", [])]
        records.append({
            "file_name": str(file_name),
            "image_id": len(records) + 1,
            "crowdhuman_id": entry["ID"],
            "height": height,
            "width": width,
            "annotations": anns,
        })
    return records


def with_training_box(records: Sequence[Dict], box: str) -> List[Dict]:
    """Records whose ``bbox`` is the ``box`` (a key of :data:`TRAINING_BOXES`) of each annotation."""
    if box not in TRAINING_BOXES:
        raise ValueError(f"DATASETS.TRAIN_BOX must be one of {sorted(TRAINING_BOXES)}, got {box!r}")
    field = TRAINING_BOXES[box]
    return [
        dict(r, annotations=[dict(a, bbox=list(a.get(field, a["bbox"]))) for a in r.get("annotations", ())])
        for r in records
    ]


def write_odgt(path: PathLike, entries: Sequence[Mapping[str, Any]]) -> None:
    """Write image entries as an ``.odgt`` file (one JSON object per line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(e) + "\n" for e in entries))

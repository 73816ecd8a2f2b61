"""EuroCity Persons (ECP): per-image JSON labels, detections in the same layout.

On-disk layout (as distributed)::

    ECP/<day|night>/img/<train|val|test>/<city>/<city>_<n>.png
    ECP/<day|night>/labels/<train|val>/<city>/<city>_<n>.json

A label file is one frame: ``{"identity": "frame", "imagewidth": W, "imageheight": H,
"children": [objects]}``; an object has ``identity`` (``pedestrian``, ``rider``,
``person-group-far-away``, vehicles, ...), the box ``x0 y0 x1 y1``, ``tags``
(``occluded>10/40/80``, ``truncated>10/40/80``, ``sitting-lying``, ``behind-glass``,
``depiction``, ...) and its own ``children`` (e.g. a rider's bicycle, not used here).

Records keep every person-like object: ``pedestrian`` is a clean target unless tagged
``sitting-lying`` / ``behind-glass`` (ignore, as the ECP script's ParamsFactory.ignore_gt),
riders and far-away groups are ignore boxes with their identity as ``label`` (a group tagged
``depiction`` gets the label ``person-group-far-away-depiction``, which the evaluation discards
as the script does), and ``occlusion`` / ``truncation`` hold the tags' levels in percent.
"""
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ..reading import read_json
from .pedestrian_json import PathLike, PedestrianDataError, drop_degenerate, make_annotation

__all__ = [
    "ECP_TARGET",
    "ECP_PERSON_IDENTITIES",
    "read_ecp_frame",
    "ecp_annotation",
    "load_ecp",
    "read_ecp_detections",
    "write_ecp_frame",
]

ECP_TARGET = "pedestrian"
# Identities kept in records (the others are vehicles, buggies, ... of no use to a person detector).
ECP_PERSON_IDENTITIES = ("pedestrian", "rider", "person-group-far-away")
# A clean pedestrian with one of these tags is ignored (ParamsFactory.ignore_gt).
ECP_IGNORE_TAGS = ("sitting-lying", "behind-glass")
DEPICTION_TAG = "depiction"
DEPICTION_SUFFIX = "-depiction"
OCCLUSION_TAG, TRUNCATION_TAG = "occluded", "truncated"
_LEVEL = re.compile(r"\d+")


def _frame_children(frame: Any, path: Path) -> List[Mapping[str, Any]]:
    if not isinstance(frame, Mapping) or not isinstance(frame.get("children"), list):
        raise PedestrianDataError(
            f"{path}: no 'children' list (expected an ECP frame: {{\"identity\": \"frame\", \"children\": [...]}})"
        )
    for i, child in enumerate(frame["children"]):
        if not isinstance(child, Mapping) or "identity" not in child:
            raise PedestrianDataError(f"{path}: children[{i}] is not an object with an 'identity'")
        try:
            [float(child[k]) for k in ("x0", "y0", "x1", "y1")]
        except (KeyError, TypeError, ValueError):
            raise PedestrianDataError(f"{path}: children[{i}] ({child['identity']}) needs numbers x0 y0 x1 y1") from None
    return frame["children"]


def _tag_level(tags: Sequence[str], kind: str) -> int:
    """Level of the last ``<kind>>N`` tag with exactly one number (ParamsFactory.ignore_gt), else 0."""
    level = 0
    for tag in tags:
        if kind in tag:
            numbers = _LEVEL.findall(tag)
            if len(numbers) == 1:
                level = int(numbers[0])
    return level


def ecp_annotation(obj: Mapping[str, Any]) -> Dict:
    """Record annotation of one ECP object (see the module doc)."""
    identity, tags = str(obj["identity"]), list(obj.get("tags", ()))
    x0, y0, x1, y1 = (float(obj[k]) for k in ("x0", "y0", "x1", "y1"))
    label = identity + DEPICTION_SUFFIX if identity != ECP_TARGET and DEPICTION_TAG in tags else identity
    ignore = identity != ECP_TARGET or any(t in ECP_IGNORE_TAGS for t in tags)
    ann = make_annotation([x0, y0, x1 - x0, y1 - y0], None, ignore, label)
    ann.update(occlusion=_tag_level(tags, OCCLUSION_TAG), truncation=_tag_level(tags, TRUNCATION_TAG), tags=tags)
    return ann


def read_ecp_frame(path: PathLike) -> Dict:
    """``{"width", "height", "annotations"}`` of one label file (person-like objects only)."""
    path = Path(path)
    frame = read_json(path, "ECP file", PedestrianDataError)
    children = _frame_children(frame, path)
    anns = [ecp_annotation(o) for o in children if o["identity"] in ECP_PERSON_IDENTITIES]
    return {
        "width": frame.get("imagewidth"),
        "height": frame.get("imageheight"),
        "annotations": drop_degenerate(anns, str(path)),
    }


def load_ecp(label_root: PathLike, image_root: PathLike, image_ext: str = ".png") -> List[Dict]:
    """Records of a split: ``label_root/<city>/<name>.json`` with images ``image_root/<city>/<name><ext>``.

    Images are sorted by (city, name) and numbered 1..N.
    """
    label_root = Path(label_root)
    files = sorted(label_root.glob("*/*.json"))
    if not files:
        raise FileNotFoundError(f"no ECP label files {label_root}/<city>/*.json found")
    records = []
    for path in files:
        frame = read_ecp_frame(path)
        records.append({
            "file_name": str(Path(image_root) / path.parent.name / (path.stem + image_ext)),
            "image_id": len(records) + 1,
            "height": frame["height"],
            "width": frame["width"],
            "annotations": frame["annotations"],
        })
    return records


def read_ecp_detections(path: PathLike, image_id: Any, identity: str = ECP_TARGET) -> List[Dict]:
    """COCO-style results of one ECP detection file (a frame whose children have a ``score``);
    only objects of ``identity`` are detections of it (the script's ``skip_det``)."""
    path = Path(path)
    frame = read_json(path, "ECP file", PedestrianDataError)
    results = []
    for i, obj in enumerate(_frame_children(frame, path)):
        if obj["identity"] != identity:
            continue
        if "score" not in obj:
            raise PedestrianDataError(f"{path}: children[{i}] has no 'score'")
        x0, y0, x1, y1 = (float(obj[k]) for k in ("x0", "y0", "x1", "y1"))
        results.append({"image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(obj["score"])})
    return results


def write_ecp_frame(path: PathLike, width: int, height: int, objects: Sequence[Mapping[str, Any]]) -> None:
    """Write one ECP frame (label or detection file); ``objects`` carry identity, x0..y1 and
    optionally tags / score."""
    frame = {
        "identity": "frame",
        "imagewidth": width,
        "imageheight": height,
        "children": [dict({"tags": [], "children": []}, **o) for o in objects],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(frame))

"""EuroCity Persons (ECP): per-image JSON labels, detections in the same layout.

On-disk layout (as distributed)::

    ECP/<day|night>/img/<train|val|test>/<city>/<city>_<n>.png
    ECP/<day|night>/labels/<train|val>/<city>/<city>_<n>.json

A label file is one frame: ``{"identity": "frame", "imagewidth": W, "imageheight": H,
"children": [objects]}``; an object has ``identity`` (``pedestrian``, ``rider``,
``person-group-far-away``, vehicles, ...), the box ``x0 y0 x1 y1``, ``tags``
(``occluded>10/40/80``, ``truncated>10/40/80``, ``sitting-lying``, ``behind-glass``,
``depiction``, ...) and its own ``children`` (e.g. a rider's bicycle, not used here).

Records keep every person-like object as the file gives it: ``corners`` is the box
``[x0, y0, x1, y1]`` (the evaluation computes on these, as the ECP script does), ``bbox`` the same
as ``[x0, y0, x1 - x0, y1 - y0]`` (negative where x1 < x0: the training mapper leaves such boxes
out, the evaluation keeps them). ``pedestrian`` is a clean target unless tagged ``sitting-lying`` /
``behind-glass`` (ignore, as the ECP script's ParamsFactory.ignore_gt); riders and far-away
groups are ignore boxes with their identity as ``label`` (a group tagged ``depiction`` gets the
label ``person-group-far-away-depiction``, which the evaluation discards as the script does; a
depicted rider stays a rider); ``occlusion`` / ``truncation`` hold the tags' levels in percent,
read as the script does (per tag, ``occluded`` before ``truncated``, a level only when the tag
holds exactly one number, the last such tag winning).

Detection files are frames whose children carry a ``score`` (or ``confidencevalues[0]``) and the
box as ``x0 y0 x1 y1`` or ``mincol minrow maxcol maxrow`` (``x1 = maxcol + 1``); ``objects`` may
stand for ``children``, as the script's loader reads them.
"""
import glob
import json
import re
from collections import abc
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ..evaluation.miss_rate.inputs import FOLDER_READERS, Detections, FolderReader, GroundTruth, MissRateInputError
from ..evaluation.miss_rate.protocols import Protocol
from ..reading import read_json
from .pedestrian_json import PathLike, PedestrianDataError, make_annotation

__all__ = [
    "ECP_TARGET",
    "ECP_PERSON_IDENTITIES",
    "ecp_label_files",
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
# Identities whose depictions (posters, ...) the evaluation discards (ParamsFactory.ignore_gt).
DISCARDED_DEPICTIONS = ("person-group-far-away",)
DEPICTION_SUFFIX = "-depiction"
OCCLUSION_TAG, TRUNCATION_TAG = "occluded", "truncated"
_LEVEL = re.compile(r"\d+")
CORNERS = ("x0", "y0", "x1", "y1")
# Detection boxes may come as rows / columns: x0 = mincol, y0 = minrow, x1 = maxcol + 1, y1 = maxrow + 1.
PIXEL_CORNERS = ("mincol", "minrow", "maxcol", "maxrow")


def _frame_children(frame: Any, path: Path, detections: bool = False) -> List[Mapping[str, Any]]:
    """The objects of a frame; a detection frame may name them ``objects`` (the script's loader)."""
    children = None
    if isinstance(frame, abc.Mapping):
        children = frame.get("objects", frame.get("children")) if detections else frame.get("children")
    if not isinstance(children, list):
        raise PedestrianDataError(
            f"{path}: no 'children' list (expected an ECP frame: {{\"identity\": \"frame\", \"children\": [...]}})"
        )
    for i, child in enumerate(children):
        if not isinstance(child, abc.Mapping) or "identity" not in child:
            raise PedestrianDataError(f"{path}: children[{i}] is not an object with an 'identity'")
        keys = PIXEL_CORNERS if "maxrow" in child else CORNERS
        try:
            [float(child[k]) for k in keys]
        except (KeyError, TypeError, ValueError):
            raise PedestrianDataError(f"{path}: children[{i}] ({child['identity']}) needs numbers x0 y0 x1 y1") from None
    return children


def _corners(obj: Mapping[str, Any]) -> List[float]:
    """``[x0, y0, x1, y1]`` of an object, as the script's preprocess_det reads it."""
    if "maxrow" in obj:
        return [float(obj["mincol"]), float(obj["minrow"]), float(obj["maxcol"]) + 1, float(obj["maxrow"]) + 1]
    return [float(obj[k]) for k in CORNERS]


def _tag_levels(tags: Sequence[str]) -> Dict[str, int]:
    """``{"occlusion", "truncation"}`` levels in percent as ParamsFactory.ignore_gt reads them:
    per tag, one naming ``occluded`` sets only the occlusion (``elif``), one with exactly one
    number sets its level, the last such tag wins; 0 without one."""
    levels = {OCCLUSION_TAG: 0, TRUNCATION_TAG: 0}
    for tag in tags:
        kind = OCCLUSION_TAG if OCCLUSION_TAG in tag else TRUNCATION_TAG if TRUNCATION_TAG in tag else None
        numbers = _LEVEL.findall(tag)
        if kind is not None and len(numbers) == 1:
            levels[kind] = int(numbers[0])
    return {"occlusion": levels[OCCLUSION_TAG], "truncation": levels[TRUNCATION_TAG]}


def ecp_annotation(obj: Mapping[str, Any]) -> Dict:
    """Record annotation of one ECP object (see the module doc)."""
    identity, tags = str(obj["identity"]), [str(t) for t in obj.get("tags", ())]
    corners = _corners(obj)
    x0, y0, x1, y1 = corners
    depicted = identity in DISCARDED_DEPICTIONS and DEPICTION_TAG in tags
    label = identity + DEPICTION_SUFFIX if depicted else identity
    ignore = identity != ECP_TARGET or any(t in ECP_IGNORE_TAGS for t in tags)
    ann = make_annotation([x0, y0, x1 - x0, y1 - y0], None, ignore, label)
    ann.update(corners=corners, tags=tags, **_tag_levels(tags))
    return ann


def read_ecp_frame(path: PathLike) -> Dict:
    """``{"width", "height", "annotations"}`` of one label file (person-like objects only)."""
    path = Path(path)
    frame = read_json(path, "ECP file", PedestrianDataError)
    children = _frame_children(frame, path)
    return {
        "width": frame.get("imagewidth"),
        "height": frame.get("imageheight"),
        "annotations": [ecp_annotation(o) for o in children if o["identity"] in ECP_PERSON_IDENTITIES],
    }


def ecp_label_files(label_root: PathLike) -> List[Path]:
    """The label files of a split in the ECP script's order: ``label_root/*.json``, else
    ``label_root/<city>/*.json``, sorted by path."""
    root = str(label_root)
    files = sorted(glob.glob(glob.escape(root) + "/*.json")) or sorted(glob.glob(glob.escape(root) + "/*/*.json"))
    if not files:
        raise FileNotFoundError(f"no ECP label files {root}/<city>/*.json found")
    return [Path(f) for f in files]


def load_ecp(label_root: PathLike, image_root: PathLike, image_ext: str = ".png") -> List[Dict]:
    """Records of a split: ``label_root/<city>/<name>.json`` with images ``image_root/<city>/<name><ext>``.

    Images are in the order of :func:`ecp_label_files` and numbered 1..N.
    """
    records = []
    for path in ecp_label_files(label_root):
        frame = read_ecp_frame(path)
        records.append({
            "file_name": str(Path(image_root) / path.relative_to(label_root).with_suffix(image_ext)),
            "image_id": len(records) + 1,
            "height": frame["height"],
            "width": frame["width"],
            "annotations": frame["annotations"],
        })
    return records


def read_ecp_detections(path: PathLike, image_id: Any, identity: str = ECP_TARGET) -> List[Dict]:
    """COCO-style results (``bbox`` xywh, ``corners`` as in the file, ``score``) of one ECP
    detection file; only objects of ``identity`` are detections of it (the script's ``skip_det``)."""
    path = Path(path)
    frame = read_json(path, "ECP file", PedestrianDataError)
    results = []
    for i, obj in enumerate(_frame_children(frame, path, detections=True)):
        if obj["identity"] != identity:
            continue
        try:
            score = float(obj["score"] if "score" in obj else obj["confidencevalues"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            raise PedestrianDataError(f"{path}: children[{i}] has no 'score'") from None
        x0, y0, x1, y1 = corners = _corners(obj)
        results.append({"image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0], "corners": corners, "score": score})
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


def ecp_ground_truth(folder: Path, protocol: Protocol) -> GroundTruth:
    """The label files of an ECP split (see :func:`ecp_label_files`), image ids the frame names."""
    try:
        frames = [(f.stem, read_ecp_frame(f)) for f in ecp_label_files(folder)]
    except PedestrianDataError as e:
        raise MissRateInputError(e.args[0]) from None
    annotations = [dict(a, image_id=name) for name, frame in frames for a in frame["annotations"]]
    return GroundTruth.from_annotations([name for name, _ in frames], annotations, protocol, source=str(folder))


def ecp_detections(folder: Path, gt: GroundTruth, protocol: Protocol) -> Detections:
    """``folder/<frame>.json`` detection files, one per frame of ``gt`` (as the ECP script requires)."""
    files = {p.stem: p for p in folder.glob("*.json")}
    missing = [str(i) for i in gt.image_ids if i not in files]
    extra = sorted(set(files) - set(gt.image_ids))
    if missing or extra:
        raise MissRateInputError(
            f"{folder}: expected one detection file <frame>.json per ground-truth frame; "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, not in the ground truth {extra[:5]}"
        )
    try:
        results = [r for name in gt.image_ids for r in read_ecp_detections(files[name], name)]
    except PedestrianDataError as e:
        raise MissRateInputError(e.args[0]) from None
    return Detections.from_results(results, gt, protocol, source=str(folder))


# The miss-rate tools read ECP folders (ground truth and detections) through these.
FOLDER_READERS["ecp"] = FolderReader(ecp_ground_truth, ecp_detections)

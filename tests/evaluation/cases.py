"""Seeded generators of small evaluation inputs in the benchmarks' own file formats.

Each ``*_case(seed)`` returns one JSON-able case built with ``random.Random(seed)`` (stable
across Python versions), mixing the situations the official evaluation code handles in its
own way: empty images and frames, crowds, ignore regions, degenerate and out-of-frame boxes,
non-integer coordinates that land exactly on (or one rounding step off) an overlap or height
bound, tied scores, every tag. ``write_*_case(case, folder)`` writes it as the benchmark's files:

* CrowdHuman: ``gt.odgt`` (annotation lines; without ``width``/``height`` unless the case is
  ``sized``), ``gt_sized.odgt`` (always with them) and ``dt.odgt`` (the detection dump of
  CrowdDet's ``tools/test.py``: ``ID``, ``height``, ``width``, ``dtboxes``; images may be missing).
* ECP: ``labels/<city>/<frame>.json`` and ``dets/<frame>.json``.
* CityPersons: ``gt.json`` (the official ``val_gt.json`` layout) and ``dt.json`` (COCO results).

``crowdhuman_set`` / ``citypersons_set`` build the larger, plainer sets of the evaluator-speed
benchmark. tests/evaluation/data/ holds generated cases with the numbers of the official code.
"""
import json
import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

__all__ = [
    "crowdhuman_case",
    "ecp_case",
    "citypersons_case",
    "crowdhuman_set",
    "citypersons_set",
    "write_crowdhuman_case",
    "write_ecp_case",
    "write_citypersons_case",
]

Case = Dict[str, Any]

# Score values that tie, sit on JI's thresholds 0.1 * i, or are plain random.
_TIED_SCORES = (0.9, 0.5, 0.3, 0.30000000000000004, 0.1, 0.0, 0.75, 0.75)


def _score(rng: random.Random) -> float:
    if rng.random() < 0.3:
        return rng.choice(_TIED_SCORES)
    return round(rng.random(), rng.choice((2, 5, 17)))


def _jittered(rng: random.Random, x: float, y: float, w: float, h: float, jit: float) -> List[float]:
    """``[x y w h]`` moved and resized by up to ``jit`` of its size (a detection near the box)."""
    return [x + rng.uniform(-jit, jit) * abs(w), y + rng.uniform(-jit, jit) * abs(h),
            abs(w) * rng.uniform(1 - jit, 1 + jit), abs(h) * rng.uniform(1 - jit, 1 + jit)]


def _coord(rng: random.Random, value: float, integer: bool) -> float:
    """``value`` as an int, or with 1 or 2 decimals, or as a plain float."""
    if integer:
        return int(round(value))
    return round(value, rng.choice((1, 1, 2, 17)))


# --------------------------------------------------------------------------------------------
# CrowdHuman
# --------------------------------------------------------------------------------------------

def _crowdhuman_gtbox(rng: random.Random, width: int, height: int, box_id: int, near=None) -> Dict:
    h = rng.uniform(4, 0.8 * height)
    w = h * rng.uniform(0.3, 0.6)
    if near is not None:
        x = near[0] + rng.uniform(-0.5, 0.5) * near[2]
        y = near[1] + rng.uniform(-0.3, 0.3) * near[3]
        h, w = near[3] * rng.uniform(0.7, 1.3), near[2] * rng.uniform(0.7, 1.3)
    else:
        x, y = rng.uniform(-w / 3, width - 2 * w / 3), rng.uniform(-h / 4, height - 3 * h / 4)
    kind = rng.random()
    if kind < 0.04:
        w = rng.choice((0, -3, 0.0))
    elif kind < 0.07:
        h = rng.choice((0, -2))
    elif kind < 0.10:
        x = rng.choice((-w - 5, width + 3))  # entirely outside the image
    fbox = [int(round(v)) for v in (x, y, w, h)]
    mask = rng.random() < 0.18
    extra: Dict[str, Any] = {"box_id": box_id, "occ": int(rng.random() < 0.4)}
    if mask or rng.random() < 0.08:
        extra["ignore"] = 1
    elif rng.random() < 0.3:
        extra["ignore"] = 0
    vh = max(1, int(fbox[3] * rng.uniform(0.3, 1.0))) if fbox[3] > 0 else fbox[3]
    return {
        "tag": "mask" if mask else "person",
        "fbox": fbox,
        "hbox": [fbox[0] + fbox[2] // 4, fbox[1], max(1, fbox[2] // 2), max(1, fbox[3] // 7)],
        "vbox": [fbox[0], fbox[1], fbox[2], vh],
        "head_attr": {"ignore": int(rng.random() < 0.1), "occ": 0, "unsure": 0},
        "extra": extra,
    }


def _crowdhuman_dets(rng: random.Random, gtboxes: List[Dict], width: int, height: int, rounded: bool) -> List[Dict]:
    dets = []
    for g in gtboxes:
        x, y, w, h = g["fbox"]
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            jit = rng.choice((0.0, 0.05, 0.15, 0.3))
            box = _jittered(rng, x, y, w, h, jit)
            if rng.random() < 0.1:  # IoU near 0.5: the same box, twice as tall
                box = [x, y, w, 2 * h]
            dets.append(box)
    for _ in range(rng.choice((0, 1, 3, 8))):
        h = rng.uniform(5, 0.8 * height)
        dets.append([rng.uniform(-20, width), rng.uniform(-20, height), h * rng.uniform(0.3, 0.6), h])
    out = []
    for box in dets:
        if rounded:
            box = [round(v, 1) for v in box]
        out.append({"box": box, "score": _score(rng), "tag": 1})
    rng.shuffle(out)
    return out


def crowdhuman_case(seed: int) -> Case:
    """``{"seed", "sized", "gt": [annotation lines with width/height], "dt": [dump lines]}``."""
    rng = random.Random(seed)
    n_images = rng.choice((1, 1, 1, 2, 3, 4, 5, 6, 8, 12)) if rng.random() > 0.01 else 0
    no_dets = rng.random() < 0.05
    only_masks = rng.random() < 0.04
    drop_rate = rng.choice((0.0, 0.0, 0.0, 0.0, 0.0, 0.15, 0.4))
    empty_rate = rng.choice((0.0, 0.0, 0.0, 0.0, 0.1, 0.3))
    rounded = rng.random() < 0.5
    gt, dt = [], []
    for i in range(n_images):
        width, height = rng.randint(120, 1100), rng.randint(100, 900)
        n_boxes = 0 if rng.random() < empty_rate else rng.choice((1, 2, 3, 5, 8, 12, 20))
        boxes: List[Dict] = []
        for k in range(n_boxes):
            near = boxes[-1]["fbox"] if boxes and rng.random() < 0.35 else None
            boxes.append(_crowdhuman_gtbox(rng, width, height, k, near))
        if only_masks:
            for b in boxes:
                b["tag"], b["extra"]["ignore"] = "mask", 1
        image_id = f"{seed},{i:04x}{rng.getrandbits(16):04x}"
        gt.append({"ID": image_id, "width": width, "height": height, "gtboxes": boxes})
        if rng.random() < drop_rate:
            continue
        dtboxes = [] if no_dets else _crowdhuman_dets(rng, boxes, width, height, rounded)
        dt.append({"ID": image_id, "height": height, "width": width, "dtboxes": dtboxes})
    rng.shuffle(dt)
    return {"seed": seed, "sized": rng.random() < 0.5, "gt": gt, "dt": dt}


def crowdhuman_set(n_images: int, seed: int = 0, persons: int = 23, detections: int = 100) -> Case:
    """A CrowdHuman-like set for timing: ``persons`` boxes (some ``mask``) and ``detections``
    detections (jittered copies and false positives) per image, as :func:`crowdhuman_case`."""
    rng = random.Random(seed)
    gt, dt = [], []
    for i in range(n_images):
        width, height = rng.randint(600, 1200), rng.randint(400, 900)
        boxes: List[Dict] = []
        for k in range(persons):
            near = boxes[-1]["fbox"] if boxes and rng.random() < 0.5 else None
            boxes.append(_crowdhuman_gtbox(rng, width, height, k, near))
        image_id = f"{i:06d}"
        dets = []
        for _ in range(detections):
            if rng.random() < 0.7:
                x, y, w, h = rng.choice(boxes)["fbox"]
                jit = rng.uniform(0, 0.3)
                box = _jittered(rng, x, y, w, h, jit)
            else:
                h = rng.uniform(10, 0.8 * height)
                box = [rng.uniform(0, width), rng.uniform(0, height), 0.4 * h, h]
            dets.append({"box": [round(v, 1) for v in box], "score": round(rng.random(), 5), "tag": 1})
        gt.append({"ID": image_id, "width": width, "height": height, "gtboxes": boxes})
        dt.append({"ID": image_id, "height": height, "width": width, "dtboxes": dets})
    return {"seed": seed, "sized": True, "gt": gt, "dt": dt}


def _write_lines(path: Path, entries: List[Dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def write_crowdhuman_case(case: Case, folder: Path) -> Tuple[Path, Path, Path]:
    """Write ``gt.odgt``, ``gt_sized.odgt``, ``dt.odgt`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sized, unsized, dump = folder / "gt_sized.odgt", folder / "gt.odgt", folder / "dt.odgt"
    _write_lines(sized, case["gt"])
    if case["sized"]:
        unsized = sized
    else:
        _write_lines(unsized, [{k: v for k, v in e.items() if k not in ("width", "height")} for e in case["gt"]])
    _write_lines(dump, case["dt"])
    return unsized, sized, dump


# --------------------------------------------------------------------------------------------
# EuroCity Persons
# --------------------------------------------------------------------------------------------

ECP_WIDTH, ECP_HEIGHT = 1920, 1024
_CITIES = ("amsterdam", "barcelona", "berlin", "budapest", "marseille", "roma", "zagreb")
_PEDESTRIAN_TAGS = (
    "occluded>10", "occluded>40", "occluded>80", "truncated>10", "truncated>40", "truncated>80",
    "sitting-lying", "behind-glass", "depiction", "unsure-orientation",
    "occluded>40-truncated>10", "truncated-occluded>40", "occluded", "truncated>10%",
)
_OTHER_IDENTITIES = ("car", "bicycle", "motorbike", "buggy", "scooter", "wheelchair", "tricycle", "co-rider")
# Ground-truth heights on the setups' bounds (20, 30, 40, 60) and detection heights on the
# expanded filter's (16, 24, 32, 75), each also one small step off.
_GT_HEIGHTS = (20, 30, 40, 60, 19.9, 39.9, 40.1, 60.1, 29.9)
_DET_HEIGHTS = (16, 24, 32, 75, 32.1, 74.9, 15.9)


def _ecp_box(rng: random.Random, integer: bool, odd: float) -> Dict[str, float]:
    """A box ``x0 y0 x1 y1``; with probability ``odd`` a degenerate or out-of-frame one."""
    h = rng.choice(_GT_HEIGHTS) if rng.random() < 0.3 else rng.uniform(8, 300)
    w = h * rng.uniform(0.25, 0.5)
    x0 = rng.uniform(-w / 2, ECP_WIDTH - w / 2)
    y0 = rng.uniform(-h / 3, ECP_HEIGHT - 2 * h / 3)
    box = {"x0": _coord(rng, x0, integer), "y0": _coord(rng, y0, integer)}
    box["x1"] = _coord(rng, box["x0"] + w, integer)
    box["y1"] = box["y0"] + h if rng.random() < 0.5 else _coord(rng, box["y0"] + h, integer)
    if rng.random() < odd:
        kind = rng.randrange(4)
        if kind == 0:
            box["x0"], box["x1"] = box["x1"], box["x0"]  # x1 <= x0
        elif kind == 1:
            box["y0"], box["y1"] = box["y1"], box["y0"]
        elif kind == 2:
            box["x1"] = box["x0"]
        else:
            shift = rng.choice((-ECP_WIDTH, ECP_WIDTH))  # out of the frame
            box["x0"], box["x1"] = box["x0"] + shift, box["x1"] + shift
    return box


def _ecp_object(rng: random.Random, integer: bool, odd: float) -> Dict:
    r = rng.random()
    identity = ("pedestrian" if r < 0.6 else "rider" if r < 0.75 else "person-group-far-away" if r < 0.83
                else rng.choice(_OTHER_IDENTITIES))
    tags: List[str] = []
    if identity == "pedestrian":
        tags = rng.sample(_PEDESTRIAN_TAGS, rng.choice((0, 0, 1, 1, 2, 3)))
    elif rng.random() < 0.25:
        tags = ["depiction"]
    obj = dict(identity=identity, **_ecp_box(rng, integer, odd), tags=tags, children=[])
    if identity == "rider" and rng.random() < 0.5:
        obj["children"] = [dict(identity="bicycle", **_ecp_box(rng, integer, odd), tags=[], children=[])]
    if rng.random() < 0.3:
        obj["orient"] = rng.uniform(-180, 180)
    return obj


def _ecp_det(rng: random.Random, box: Dict[str, float], integer: bool) -> Dict:
    r = rng.random()
    x0, y0, x1, y1 = box["x0"], box["y0"], box["x1"], box["y1"]
    if r < 0.15:  # the same box, twice as tall: IoU 1/2 up to rounding
        det = {"x0": x0, "y0": y0, "x1": x1, "y1": y0 + 2 * (y1 - y0)}
    elif r < 0.25:
        h = rng.choice(_DET_HEIGHTS)
        det = {"x0": x0, "y0": y0, "x1": x1, "y1": y0 + h}
    else:
        jit = rng.choice((0.0, 0.05, 0.2, 0.4))
        w, h = x1 - x0, y1 - y0
        det = {k: _coord(rng, v + rng.uniform(-jit, jit) * (abs(w) if k[0] == "x" else abs(h)), integer)
               for k, v in box.items() if k in ("x0", "y0", "x1", "y1")}
    identity = "pedestrian" if rng.random() < 0.9 else rng.choice(("rider", "cyclist", "car"))
    return dict(identity=identity, **det, score=_score(rng))


def _ecp_det_file(rng: random.Random, dets: List[Dict]) -> Dict:
    """A detection file, mostly as ``{"identity": "frame", "children": [...]}``; some use the
    layouts the ECP loader also reads (``objects``, ``confidencevalues``, min/max row/col)."""
    layout = rng.random()
    children = []
    for d in dets:
        d = dict(d)
        if layout < 0.05:
            d["confidencevalues"] = [d.pop("score")]
        elif layout < 0.1:
            d.update(mincol=d.pop("x0"), minrow=d.pop("y0"), maxcol=d.pop("x1") - 1, maxrow=d.pop("y1") - 1)
        children.append(d)
    key = "objects" if 0.1 <= layout < 0.15 else "children"
    frame: Dict[str, Any] = {"identity": "frame", key: children}
    if rng.random() < 0.5:
        frame.update(imagewidth=ECP_WIDTH, imageheight=ECP_HEIGHT)
    return frame


def ecp_case(seed: int) -> Case:
    """``{"seed", "frames": [{"city", "name", "label": frame, "det": detection frame}]}``."""
    rng = random.Random(seed)
    n_frames = rng.choice((1, 1, 2, 3, 4, 5, 8))
    integer = rng.random() < 0.2
    no_dets = rng.random() < 0.05
    odd = rng.choice((0.0, 0.0, 0.0, 0.03, 0.1))
    names = set()
    while len(names) < n_frames:
        city = rng.choice(_CITIES)
        names.add((city, f"{city}_{rng.randint(0, 99999):05d}"))
    frames = []
    for city, name in sorted(names):
        objects = [_ecp_object(rng, integer, odd) for _ in range(rng.choice((0, 0, 1, 2, 3, 5, 8, 12)))]
        dets = []
        if not no_dets:
            for o in objects:
                for _ in range(rng.choice((0, 1, 1, 2))):
                    dets.append(_ecp_det(rng, o, integer))
            for _ in range(rng.choice((0, 1, 2, 5))):
                dets.append(_ecp_det(rng, _ecp_box(rng, integer, odd), integer))
            rng.shuffle(dets)
        label = {"identity": "frame", "imagewidth": ECP_WIDTH, "imageheight": ECP_HEIGHT, "tags": [],
                 "children": objects}
        frames.append({"city": city, "name": name, "label": label, "det": _ecp_det_file(rng, dets)})
    return {"seed": seed, "frames": frames}


def write_ecp_case(case: Case, folder: Path) -> Tuple[Path, Path]:
    """Write ``labels/<city>/<frame>.json`` and ``dets/<frame>.json``; returns (labels, dets)."""
    labels, dets = Path(folder) / "labels", Path(folder) / "dets"
    dets.mkdir(parents=True, exist_ok=True)
    for f in case["frames"]:
        (labels / f["city"]).mkdir(parents=True, exist_ok=True)
        (labels / f["city"] / f"{f['name']}.json").write_text(json.dumps(f["label"]))
        (dets / f"{f['name']}.json").write_text(json.dumps(f["det"]))
    return labels, dets


# --------------------------------------------------------------------------------------------
# CityPersons
# --------------------------------------------------------------------------------------------

_CP_HEIGHTS = (20, 50, 75, 49, 51, 74, 76, 19, 50.5)
_CP_VIS = (0.2, 0.65, 0.9, 1.0, 0.19999, 0.65001, 0.0)
_CP_DET_HEIGHTS = (16, 40, 93.75, 39.9, 93.7, 15.9, 40.0000001)


def _cp_annotation(rng: random.Random, integer: bool) -> Dict:
    h = rng.choice(_CP_HEIGHTS) if rng.random() < 0.35 else rng.uniform(8, 400)
    w = 0.41 * h
    box = [_coord(rng, rng.uniform(-w / 2, 2048 - w / 2), integer), _coord(rng, rng.uniform(0, 1024 - h), integer),
           _coord(rng, w, integer), h if isinstance(h, int) or not integer else int(round(h))]
    kind = rng.random()
    if kind < 0.03:
        box[2] = rng.choice((0, -4))
    elif kind < 0.05:
        box[3] = 0
    elif kind < 0.07:
        box[0] = rng.choice((-box[2] - 10, 2050))
    vis = rng.choice(_CP_VIS) if rng.random() < 0.4 else round(rng.random(), 12)
    vis_h = box[3] * max(vis, 0.0)
    return {"category_id": 1, "iscrowd": 0, "ignore": int(rng.random() < 0.25), "bbox": box,
            "vis_bbox": [box[0], box[1], box[2], vis_h], "height": box[3], "vis_ratio": vis}


def _cp_det(rng: random.Random, bbox: List[float], image_id: int) -> Dict:
    x, y, w, h = bbox
    r = rng.random()
    if r < 0.15:
        box = [x, y, w, 2 * h]  # IoU exactly 1/2 for integer boxes
    elif r < 0.25:
        box = [x, y, w, rng.choice(_CP_DET_HEIGHTS)]
    else:
        jit = rng.choice((0.0, 0.05, 0.2, 0.4))
        box = _jittered(rng, x, y, w, h, jit)
        box = [round(v, rng.choice((2, 17))) for v in box]
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": _score(rng)}


def citypersons_case(seed: int) -> Case:
    """``{"seed", "gt": val_gt.json-style object, "dt": COCO results list}``."""
    rng = random.Random(seed)
    n_images = rng.choice((1, 1, 2, 3, 4, 6, 8))
    integer = rng.random() < 0.7
    image_ids = sorted(rng.sample(range(1, 60), n_images)) if rng.random() < 0.3 else list(range(1, n_images + 1))
    first_id = 0 if rng.random() < 0.08 else 1
    no_dets = rng.random() < 0.05
    many_dets = rng.random() < 0.01
    images, annotations, dets = [], [], []
    for image_id in image_ids:
        images.append({"id": image_id, "im_name": f"city_{image_id:06d}_leftImg8bit.png", "height": 1024, "width": 2048})
        anns = [_cp_annotation(rng, integer) for _ in range(rng.choice((0, 0, 1, 2, 3, 5, 8, 12)))]
        for a in anns:
            annotations.append(dict(a, id=len(annotations) + first_id, image_id=image_id))
            if not no_dets:
                dets += [_cp_det(rng, a["bbox"], image_id) for _ in range(rng.choice((0, 1, 1, 2)))]
        if not no_dets:
            for _ in range(rng.choice((0, 1, 2, 5)) + (1005 if many_dets and image_id == image_ids[0] else 0)):
                h = rng.choice(_CP_DET_HEIGHTS) if rng.random() < 0.3 else rng.uniform(10, 300)
                dets.append({"image_id": image_id, "category_id": 1, "score": _score(rng),
                             "bbox": [rng.uniform(-20, 2048), rng.uniform(0, 1000), 0.41 * h, h]})
    rng.shuffle(dets)
    categories = [{"id": 1, "name": "pedestrian"}, {"id": 0, "name": "ignore region"}]
    return {"seed": seed, "gt": {"categories": categories, "images": images, "annotations": annotations},
            "dt": dets}


def citypersons_set(n_images: int, seed: int = 0, persons: int = 23, detections: int = 100) -> Case:
    """A CityPersons-like set for timing (``persons`` annotations, ``detections`` results per image)."""
    rng = random.Random(seed)
    images, annotations, dets = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "im_name": f"city_{image_id:06d}_leftImg8bit.png", "height": 1024, "width": 2048})
        boxes = []
        for _ in range(persons):
            a = _cp_annotation(rng, True)
            boxes.append(a["bbox"])
            annotations.append(dict(a, id=len(annotations) + 1, image_id=image_id))
        for _ in range(detections):
            if rng.random() < 0.7:
                x, y, w, h = rng.choice(boxes)
                jit = rng.uniform(0, 0.3)
                box = _jittered(rng, x, y, w, h, jit)
            else:
                h = rng.uniform(10, 400)
                box = [rng.uniform(0, 2048), rng.uniform(0, 1024), 0.41 * h, h]
            dets.append({"image_id": image_id, "category_id": 1, "bbox": [round(v, 2) for v in box],
                         "score": round(rng.random(), 5)})
    categories = [{"id": 1, "name": "pedestrian"}, {"id": 0, "name": "ignore region"}]
    return {"seed": seed, "gt": {"categories": categories, "images": images, "annotations": annotations},
            "dt": dets}


def write_citypersons_case(case: Case, folder: Path) -> Tuple[Path, Path]:
    """Write ``gt.json`` and ``dt.json`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gt, dt = folder / "gt.json", folder / "dt.json"
    gt.write_text(json.dumps(case["gt"]))
    dt.write_text(json.dumps(case["dt"]))
    return gt, dt

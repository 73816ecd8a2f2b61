"""Writing the synthetic scenes in the real data-set formats, and the generator's command line.

Each format has a writer (:data:`FORMAT_WRITERS`) that stores one split's rendered images and
annotations under ``<out>/<format>/`` and returns the ground-truth records.
"""
import argparse
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ...atomic import atomic_output
from ..caltech import CALTECH_SPLITS, VbbObject, caltech_image_name, prepare_caltech, write_seq, write_vbb
from ..citypersons import write_citypersons_mat
from ..crowdhuman import write_odgt
from ..ecp import ecp_annotation, write_ecp_frame
from ..pedestrian_json import make_annotation, save_pedestrian_json
from .layout import SceneObject, SyntheticConfig, render_scene

__all__ = ["KIND_LABELS", "FORMATS", "FORMAT_WRITERS", "generate_synthetic", "main"]

logger = logging.getLogger(__name__)

# Scene object kinds -> label in each format. Only "pedestrian" is a clean target (ignore 0), unless
# SyntheticConfig.classes names more kinds (CityPersons ground truth).
# CrowdHuman: every person is a "person" (riders and sitting people too), crowds / posters are
# "mask" regions. ECP: (identity, tags); a poster person is a depicted group (not evaluated).
KIND_LABELS = {
    "pedestrian": {"citypersons": 1, "caltech": "person", "crowdhuman": "person", "ecp": ("pedestrian", ())},
    "rider": {"citypersons": 2, "caltech": "person?", "crowdhuman": "person", "ecp": ("rider", ())},
    "sitting": {"citypersons": 3, "caltech": "person?", "crowdhuman": "person",
                "ecp": ("pedestrian", ("sitting-lying",))},
    "other": {"citypersons": 4, "caltech": "person-fa", "crowdhuman": "mask",
              "ecp": ("person-group-far-away", ("depiction",))},
    "group": {"citypersons": 5, "caltech": "people", "crowdhuman": "mask", "ecp": ("person-group-far-away", ())},
    "ignore": {"citypersons": 0, "caltech": "people", "crowdhuman": "mask", "ecp": ("person-group-far-away", ())},
}
TARGET_KIND = "pedestrian"
# Kinds that are no single person (never a class).
NOT_A_PERSON = ("group", "ignore")
FORMATS = ("citypersons", "caltech", "crowdhuman", "ecp")
SPLITS = {"citypersons": ("train", "val"), "caltech": ("train", "test"), "crowdhuman": ("train", "val"),
          "ecp": ("train", "val")}
PNG_FORMATS, JPEG_FORMATS = ("citypersons", "ecp"), ("caltech", "crowdhuman")
# CrowdHuman head box (hbox) inside a person box: x offset, width and height as fractions of it
HEAD_BOX = (0.3, 0.4, 0.14)
# ECP occlusion tags: the largest level whose fraction the hidden part reaches
ECP_OCCLUSION_LEVELS = (10, 40, 80)
ECP_TIME = "day"
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau", "munster")
CITYPERSONS_LABEL_NAMES = {
    0: "ignore region", 1: "pedestrian", 2: "rider", 3: "sitting person", 4: "other person", 5: "people group",
}
# Fast PNG writing (zlib level 1, "sub" filter): faster than OpenCV's default, files a little larger.
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _render_task(args) -> Tuple[int, List[SceneObject], Optional[bytes], Optional[bytes]]:
    """Worker: render one image, return PNG bytes (CityPersons) and JPEG bytes (Caltech)."""
    cfg, split_id, index, formats = args
    img, objects = render_scene(cfg, split_id, index)
    png = cv2.imencode(".png", img, PNG_OPTIONS)[1].tobytes() \
        if set(formats) & set(PNG_FORMATS) else None
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])[1].tobytes() \
        if set(formats) & set(JPEG_FORMATS) else None
    return index, objects, png, jpg


def _target_kinds(cfg: SyntheticConfig, fmt: str) -> Tuple[str, ...]:
    """Kinds that are classes in ``fmt``'s ground truth (the others are ignore regions): only the
    CityPersons format has a class per kind."""
    if fmt != "citypersons":
        return (TARGET_KIND,)
    unknown = [k for k in cfg.classes if k not in KIND_LABELS or k in NOT_A_PERSON]
    if unknown or not cfg.classes:
        raise ValueError(f"SyntheticConfig.classes {list(cfg.classes)}: need kinds among "
                         f"{[k for k in KIND_LABELS if k not in NOT_A_PERSON]}")
    return tuple(cfg.classes)


def _record(file_name: str, cfg: SyntheticConfig, image_id: int, objects: List[SceneObject], fmt: str) -> Dict:
    annotations = []
    classes = _target_kinds(cfg, fmt)
    for o in objects:
        label = KIND_LABELS[o.kind][fmt]
        name = CITYPERSONS_LABEL_NAMES[label] if fmt == "citypersons" else label
        target = o.kind in classes
        annotations.append(make_annotation(o.box, o.vis_box, not target, name,
                                           category_id=classes.index(o.kind) if target else 0))
    return {"file_name": file_name, "image_id": image_id, "height": cfg.height, "width": cfg.width,
            "annotations": annotations}


def _citypersons_row(o: SceneObject, instance_id: int) -> List[int]:
    return [KIND_LABELS[o.kind]["citypersons"], *o.box, instance_id, *o.vis_box]


def _write_citypersons(root: Path, split: str, results, cfg: SyntheticConfig) -> List[Dict]:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    entries, records = [], []
    for index, objects, png, _ in results:
        city = cities[index % len(cities)]
        name = f"{city}_{index:06d}_000019_leftImg8bit.png"
        path = root / "leftImg8bit" / split / city / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        rows = [_citypersons_row(o, 1000 * (index + 1) + k) for k, o in enumerate(objects)]
        entries.append((city, name, np.array(rows, np.float64).reshape(-1, 10)))
        records.append(_record(f"{city}/{name}", cfg, 0, objects, "citypersons"))
    order = sorted(range(len(entries)), key=lambda i: entries[i][1])
    records = [dict(records[i], image_id=k + 1) for k, i in enumerate(order)]
    write_citypersons_mat(root / "annotations" / f"anno_{split}.mat", split, entries)
    names = [CITYPERSONS_LABEL_NAMES[KIND_LABELS[k]["citypersons"]] for k in _target_kinds(cfg, "citypersons")]
    save_pedestrian_json(records, root / f"ground_truth_{split}.json", categories=names if len(names) > 1 else None)
    return records


def _write_caltech(root: Path, split: str, results, cfg: SyntheticConfig) -> List[Dict]:
    sets = CALTECH_SPLITS["test" if split == "test" else "train_1x"].sets
    records, videos = [], {}
    for index, objects, _, jpg in results:
        video_index, frame = divmod(index, cfg.frames_per_video)
        key = (sets[video_index % len(sets)], f"V{video_index // len(sets):03d}")
        videos.setdefault(key, []).append((jpg, objects))
        name = caltech_image_name(key[0], key[1], frame)
        records.append(_record(name, cfg, len(records) + 1, objects, "caltech"))
    for (set_name, video), frames in sorted(videos.items()):
        write_seq(root / set_name / f"{video}.seq", [f[0] for f in frames])
        write_vbb(
            root / "annotations" / set_name / f"{video}.vbb",
            [[VbbObject(KIND_LABELS[o.kind]["caltech"], o.box, o.vis_box if o.occluded else (0, 0, 0, 0),
                        int(o.occluded)) for o in f[1]] for f in frames],
        )
    # ground truth lists images in the order prepare_caltech extracts them (set, video, frame)
    records.sort(key=lambda r: r["file_name"])
    records = [dict(r, image_id=k + 1) for k, r in enumerate(records)]
    save_pedestrian_json(records, root / f"ground_truth_{split}.json")
    return records



def _crowdhuman_box(o: SceneObject) -> Dict:
    x, y, w, h = o.box
    dx, hw, hh = HEAD_BOX
    tag = KIND_LABELS[o.kind]["crowdhuman"]
    return {
        "tag": tag,
        "fbox": list(o.box),
        "vbox": list(o.vis_box),
        "hbox": [x + int(dx * w), y, max(1, int(hw * w)), max(1, int(hh * h))],
        "extra": {"ignore": 0 if tag == "person" else 1, "occ": int(o.occluded)},
    }


def _write_crowdhuman(root: Path, split: str, results, cfg: SyntheticConfig) -> List[Dict]:
    """``Images/<ID>.jpg`` + ``annotation_<split>.odgt`` (with width / height per line)."""
    entries = []
    for index, objects, _, jpg in results:
        image_id = f"{split}_{index:06d}"
        path = root / "Images" / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpg)
        entries.append({"ID": image_id, "width": cfg.width, "height": cfg.height,
                        "gtboxes": [_crowdhuman_box(o) for o in objects]})
    write_odgt(root / f"annotation_{split}.odgt", entries)
    return [
        {"file_name": f"{e['ID']}.jpg", "image_id": k + 1, "height": cfg.height, "width": cfg.width,
         "annotations": [make_annotation(b["fbox"], b["vbox"], b["extra"]["ignore"], b["tag"]) for b in e["gtboxes"]]}
        for k, e in enumerate(entries)
    ]


def _ecp_object(o: SceneObject) -> Dict:
    identity, tags = KIND_LABELS[o.kind]["ecp"]
    x, y, w, h = o.box
    hidden = 1.0 - (o.vis_box[2] * o.vis_box[3]) / float(w * h)
    levels = [level for level in ECP_OCCLUSION_LEVELS if hidden >= level / 100]
    tags = list(tags) + ([f"occluded>{levels[-1]}"] if levels else [])
    return {"identity": identity, "x0": x, "y0": y, "x1": x + w, "y1": y + h, "tags": tags}


def _write_ecp(root: Path, split: str, results, cfg: SyntheticConfig) -> List[Dict]:
    """``day/img/<split>/<city>/<city>_<n>.png`` + ``day/labels/<split>/<city>/<city>_<n>.json``."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    records = []
    for index, objects, png, _ in results:
        city = cities[index % len(cities)]
        name = f"{city}_{index:05d}"
        image = root / ECP_TIME / "img" / split / city / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(png)
        children = [_ecp_object(o) for o in objects]
        write_ecp_frame(root / ECP_TIME / "labels" / split / city / f"{name}.json", cfg.width, cfg.height, children)
        records.append({"file_name": f"{city}/{name}.png", "image_id": 0, "height": cfg.height, "width": cfg.width,
                        "annotations": [ecp_annotation(c) for c in children]})
    records.sort(key=lambda r: r["file_name"])  # the order load_ecp reads them in
    return [dict(r, image_id=k + 1) for k, r in enumerate(records)]


# format -> writer(root, split, rendered results, cfg) -> ground-truth records
FORMAT_WRITERS: Dict[str, Callable[[Path, str, List, SyntheticConfig], List[Dict]]] = {
    "citypersons": _write_citypersons,
    "caltech": _write_caltech,
    "crowdhuman": _write_crowdhuman,
    "ecp": _write_ecp,
}


def generate_synthetic(
    out: os.PathLike,
    num_train: int,
    num_val: int,
    cfg: Optional[SyntheticConfig] = None,
    formats: Sequence[str] = FORMATS,
    workers: Optional[int] = None,
    extract_caltech: bool = False,
) -> Dict[str, List[Dict]]:
    """Generate the data set tree at ``out`` (which must not exist; written atomically).

    Args:
        num_train: images of the train split; num_val: images of the val (CityPersons) /
            test (Caltech) split. Both formats hold the same scenes.
        formats: subset of FORMATS ("citypersons", "caltech", "crowdhuman", "ecp").
        workers: rendering processes (default: CPU count; 0 = in this process).
        extract_caltech: also run :func:`~hkd_d2.data.caltech.prepare_caltech` on the Caltech
            tree (every frame) into ``<out>/caltech/prepared/{train,test}.json`` + ``images/``.

    Returns:
        ground truth records keyed ``"<format>_<split>"`` (file names relative, see module doc).
    """
    cfg = cfg or SyntheticConfig()
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    workers = os.cpu_count() if workers is None else workers
    ground_truth = {}
    with atomic_output(out, is_dir=True) as tmp:
        pool = ProcessPoolExecutor(workers) if workers > 0 else None
        try:
            for split_id, count in enumerate((num_train, num_val)):
                tasks = [(cfg, split_id, i, tuple(formats)) for i in range(count)]
                mapper = pool.map(_render_task, tasks, chunksize=8) if pool else map(_render_task, tasks)
                results = []
                for done, result in enumerate(mapper, start=1):
                    results.append(result)
                    if done % 200 == 0 or done == count:
                        logger.info("synthetic split %d: rendered %d/%d images", split_id, done, count)
                for fmt in formats:
                    split = SPLITS[fmt][split_id]
                    ground_truth[f"{fmt}_{split}"] = FORMAT_WRITERS[fmt](tmp / fmt, split, results, cfg)
        finally:
            if pool:
                pool.shutdown()
        if extract_caltech and "caltech" in formats:
            for split, split_key in (("train", "train_1x"), ("test", "test")):
                prepare_caltech(tmp / "caltech", split_key, tmp / "caltech" / "prepared", step=1,
                                json_name=f"{split}.json")
        (tmp / "config.txt").write_text(repr(asdict(cfg)) + "\n")
    logger.info("Synthetic data written to %s", out)
    return ground_truth


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Generate synthetic pedestrian data in the real data-set formats.")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier on every person height")
    parser.add_argument("--height-median", type=float, default=SyntheticConfig.height_median,
                        help="median person height in px at 480 px image height")
    parser.add_argument("--classes", nargs="+", default=list(SyntheticConfig.classes),
                        help="kinds that are classes of the CityPersons ground truth, e.g. pedestrian rider")
    parser.add_argument("--format", choices=FORMATS + ("both", "all"), default="both",
                        help="both = citypersons + caltech; all = every format")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = SyntheticConfig(width=args.width, height=args.height, seed=args.seed, scale=args.scale,
                          height_median=args.height_median, classes=tuple(args.classes))
    formats = {"both": ("citypersons", "caltech"), "all": FORMATS}.get(args.format, (args.format,))
    generate_synthetic(args.out, args.num_train, args.num_val, cfg, formats, args.workers)


if __name__ == "__main__":
    main()

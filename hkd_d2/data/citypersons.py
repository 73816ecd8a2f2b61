"""CityPersons: the official ``anno_{train,val}.mat`` annotation files on Cityscapes images.

Each ``.mat`` holds one variable ``anno_<split>_aligned``: a 1xN cell of structs with
``cityname``, ``im_name`` and ``bbs``, an (M, 10) matrix whose rows are
``[class_label x1 y1 w h instance_id x1_vis y1_vis w_vis h_vis]``. Images live in
Cityscapes' layout ``leftImg8bit/<split>/<cityname>/<im_name>``.

Conversion rules (they reproduce the official ``val_gt.json`` exactly for all 500 images):
images sorted by file name with ids from 1; boxes as integers; ``ignore = (label != 1)``
(only "pedestrian" is a clean target); ``vis_ratio = w_vis*h_vis / (w*h)`` (``val_gt.json``
stores it rounded to 12 significant digits); "people group" boxes are crowds.

Several classes (``classes=``, e.g. :data:`CITYPERSONS_MULTICLASS`): the labels named are targets,
each its own ``category_id`` in the order given; every other label stays an ignore region. The
default, ``("pedestrian",)``, is the rule above.
"""
import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import scipy.io

from ..atomic import atomic_output
from ..reading import read_mat
from .pedestrian_json import (
    PathLike,
    PedestrianDataError,
    drop_degenerate_boxes,
    image_size,
    make_annotation,
)

__all__ = [
    "CITYPERSONS_LABELS",
    "CITYPERSONS_CLASSES",
    "CITYPERSONS_MULTICLASS",
    "CITYSCAPES_IMAGE_SIZE",
    "read_citypersons_mat",
    "citypersons_annotations",
    "load_citypersons",
    "write_citypersons_mat",
]

logger = logging.getLogger(__name__)

# class_label -> label string (contract) for the first column of ``bbs``.
CITYPERSONS_LABELS = {
    0: "ignore region",
    1: "pedestrian",
    2: "rider",
    3: "sitting person",
    4: "other person",
    5: "people group",
}
# The labels that are training/evaluation targets (category ids in this order); all others become
# ignore boxes. The standard protocol has one: "pedestrian".
CITYPERSONS_CLASSES = ("pedestrian",)
# Riders and sitting people as classes of their own (a tail next to the pedestrians).
CITYPERSONS_MULTICLASS = ("pedestrian", "rider", "sitting person")
# Labels that are single people, hence possible target classes.
_PERSON_LABELS = ("pedestrian", "rider", "sitting person", "other person")
# (height, width) of every Cityscapes image: used when images are not on disk.
CITYSCAPES_IMAGE_SIZE = (1024, 2048)
BBS_COLUMNS = 10


def _str_field(value) -> str:
    return str(np.asarray(value).reshape(-1)[0])


def _variable(mat: Dict, anno_mat: PathLike) -> np.ndarray:
    names = [k for k in mat if k.startswith("anno_") and k.endswith("_aligned")]
    if len(names) != 1:
        found = [k for k in mat if not k.startswith("__")]
        raise PedestrianDataError(
            f"{anno_mat}: expected one variable 'anno_<split>_aligned' (CityPersons), found {found}"
        )
    return mat[names[0]]


def read_citypersons_mat(anno_mat: PathLike) -> List[Tuple[str, str, np.ndarray]]:
    """Raw entries of a CityPersons ``.mat`` file.

    Returns:
        list of ``(cityname, im_name, bbs)`` in file order, ``bbs`` an int64 array (M, 10).
        (``loadmat`` gives uint8/uint16/int16 depending on the image; we widen to int64 so that
        arithmetic cannot overflow, and keep negative x1.) NaN/inf values raise
        :class:`PedestrianDataError` naming the file, the image and the row.
    """
    mat = read_mat(anno_mat, "CityPersons annotation file", PedestrianDataError)
    entries = []
    for cell in _variable(mat, anno_mat).reshape(-1):
        try:
            struct = cell.reshape(-1)[0]
            raw = np.asarray(struct["bbs"], dtype=np.float64).reshape(-1, BBS_COLUMNS)
            name = _str_field(struct["im_name"])
            entries.append((_str_field(struct["cityname"]), name, raw))
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise PedestrianDataError(f"{anno_mat}: malformed entry {len(entries)}: {e!r}") from e
        bad_rows = np.flatnonzero(~np.isfinite(raw).all(axis=1))
        if bad_rows.size:
            raise PedestrianDataError(
                f"{anno_mat}, image {name}: non-finite values in bbs row {int(bad_rows[0])}: {raw[bad_rows[0]].tolist()}"
            )
    return [(city, name, raw.astype(np.int64)) for city, name, raw in entries]


def check_classes(classes: Sequence[str]) -> Tuple[str, ...]:
    """``classes`` as a tuple of distinct CityPersons person labels (else a ValueError naming them)."""
    classes = tuple(classes)
    wrong = [c for c in classes if c not in _PERSON_LABELS]
    if not classes or wrong or len(set(classes)) != len(classes):
        raise ValueError(f"CityPersons classes {list(classes)}: need distinct labels among {list(_PERSON_LABELS)}")
    return classes


def citypersons_annotations(bbs: np.ndarray, classes: Sequence[str] = CITYPERSONS_CLASSES) -> List[Dict]:
    """Record annotations of one image's ``bbs`` rows (int64 (M, 10)), in row order; the labels in
    ``classes`` are targets with their index as ``category_id``, the others ignore regions."""
    annotations = []
    for row in bbs.tolist():
        label = int(row[0])
        if label not in CITYPERSONS_LABELS:
            raise PedestrianDataError(f"unknown CityPersons class label {label} in row {row}")
        name = CITYPERSONS_LABELS[label]
        target = name in classes
        annotations.append(
            make_annotation(row[1:5], row[6:10], ignore=not target, label=name,
                            category_id=classes.index(name) if target else 0)
        )
    return annotations


def load_citypersons(
    anno_mat: PathLike,
    image_root: PathLike,
    require_images: bool = True,
    classes: Sequence[str] = CITYPERSONS_CLASSES,
) -> List[Dict]:
    """Read a CityPersons ``.mat`` into Detectron2 dataset dicts.

    Args:
        anno_mat: ``anno_train.mat`` / ``anno_val.mat``.
        image_root: ``leftImg8bit/<split>``; images are ``<image_root>/<cityname>/<im_name>``.
        require_images: raise FileNotFoundError for a listed image missing on disk. When False,
            missing images get Cityscapes' size (1024x2048).
        classes: the target labels, ``category_id`` 0, 1, ... in this order (see the module docstring).

    Returns:
        records sorted by ``im_name`` with ``image_id`` 1..N (the ids of ``val_gt.json``).
    """
    classes = check_classes(classes)
    root = Path(image_root).resolve()
    entries = sorted(read_citypersons_mat(anno_mat), key=lambda e: e[1])
    records = []
    for image_id, (city, name, bbs) in enumerate(entries, start=1):
        path = root / city / name
        if path.is_file():
            height, width = image_size(path)
        elif require_images:
            raise FileNotFoundError(f"image {path} (listed in {anno_mat}) not found on disk")
        else:
            height, width = CITYSCAPES_IMAGE_SIZE
        try:
            annotations = citypersons_annotations(bbs, classes)
        except PedestrianDataError as e:
            raise PedestrianDataError(f"{anno_mat}, image {name}: {e}") from e
        records.append(
            {
                "file_name": str(path),
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    logger.info("Loaded %d CityPersons images from %s", len(records), anno_mat)
    return drop_degenerate_boxes(records, anno_mat)


def write_citypersons_mat(
    anno_mat: PathLike, split: str, entries: List[Tuple[str, str, np.ndarray]]
) -> None:
    """Write entries ``(cityname, im_name, bbs (M, 10))`` in the official layout.

    The variable is ``anno_<split>_aligned``, a 1xN cell of 1x1 structs with fields
    ``cityname``, ``im_name``, ``bbs`` (``bbs`` stored as double).
    """
    cell = np.empty((1, len(entries)), dtype=object)
    dtype = [("cityname", object), ("im_name", object), ("bbs", object)]
    for i, (city, name, bbs) in enumerate(entries):
        struct = np.empty((1, 1), dtype=dtype)
        struct[0, 0] = (city, name, np.asarray(bbs, dtype=np.float64).reshape(-1, BBS_COLUMNS))
        cell[0, i] = struct
    with atomic_output(anno_mat) as tmp:
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, {f"anno_{split}_aligned": cell})

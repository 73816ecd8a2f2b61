"""Register pedestrian data sets with Detectron2's DatasetCatalog / MetadataCatalog.

:func:`register_pedestrian_dataset` registers any supported source in one call; the
built-in names below resolve under ``$DETECTRON2_DATASETS`` (default ``./datasets``) when
``DatasetCatalog.get`` is called, so a data set that is not on disk costs nothing until used
(see ``docs/datasets.md`` for the layouts and how to prepare each one).
"""
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..evaluation.evaluator import EVALUATOR_OF_PROTOCOL
from .caltech import prepare_caltech
from .citypersons import CITYPERSONS_CLASSES, CITYPERSONS_MULTICLASS, load_citypersons
from .crowdhuman import load_crowdhuman
from .ecp import load_ecp
from .pedestrian_json import PathLike, load_pedestrian_json
from .synthetic import SyntheticConfig, generate_synthetic

__all__ = [
    "UnregisteredDatasetError",
    "register_pedestrian_dataset",
    "register_all_pedestrian",
    "register_config_datasets",
    "datasets_root",
    "ensure_synthetic",
    "require_registered",
]

logger = logging.getLogger(__name__)

PROTOCOLS = tuple(EVALUATOR_OF_PROTOCOL)
# The synthetic data generated on first use of a synthetic_* name: the input size of
# configs/synthetic (240x320), person heights doubled so the Reasonable range (>= 50 px) is populated.
SYNTHETIC_DEFAULTS = {"num_train": 300, "num_val": 150, "width": 320, "height": 240, "scale": 2.0, "seed": 0}


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS`` (default ``./datasets``), read at call time."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _json_loader(source, image_root, categories=None, **kw) -> Callable[[], List[Dict]]:
    return lambda: load_pedestrian_json(source, image_root, categories)


def _mat_loader(source, image_root, classes=CITYPERSONS_CLASSES, **kw) -> Callable[[], List[Dict]]:
    return lambda: load_citypersons(source, image_root, classes=classes)


def _caltech_loader(source, image_root, split: Optional[str] = None, new_annotations=None, step=None, **kw):
    """A Caltech root: prepared (frames extracted to ``image_root``) on first use."""
    if split is None:
        raise ValueError(f"Caltech source {source}: pass split= (one of the CALTECH_SPLITS names)")

    def load() -> List[Dict]:
        json_file = Path(image_root) / (f"{split}_new.json" if new_annotations else f"{split}.json")
        if not json_file.is_file():
            logger.info("Preparing Caltech %s from %s into %s", split, source, image_root)
            prepare_caltech(source, split, image_root, new_annotations=new_annotations, step=step)
        return load_pedestrian_json(json_file, Path(image_root) / "images")

    return load


def _odgt_loader(source, image_root, **kw) -> Callable[[], List[Dict]]:
    return lambda: load_crowdhuman(source, image_root)


def _ecp_loader(source, image_root, **kw) -> Callable[[], List[Dict]]:
    return lambda: load_ecp(source, image_root)


# source kind -> (loader factory, protocol implied by the source or None)
_SOURCE_KINDS = {
    "json": (_json_loader, None),
    "citypersons_mat": (_mat_loader, "citypersons"),
    "caltech_root": (_caltech_loader, "caltech"),
    "crowdhuman_odgt": (_odgt_loader, "crowdhuman"),
    "ecp_labels": (_ecp_loader, "ecp"),
}
_SUFFIX_KINDS = {".json": "json", ".mat": "citypersons_mat", ".odgt": "crowdhuman_odgt"}


def _source_kind(source: PathLike, protocol: Optional[str] = None) -> str:
    path = Path(source)
    if path.suffix in _SUFFIX_KINDS:
        return _SUFFIX_KINDS[path.suffix]
    if protocol == "ecp":
        return "ecp_labels"
    if path.is_dir() or not path.suffix:
        return "caltech_root"
    raise ValueError(f"cannot tell the format of data source {source} (expected .json, .mat or a Caltech root folder)")


def register_pedestrian_dataset(
    name: str,
    source: Union[PathLike, Callable[[], List[Dict]]],
    protocol: Optional[str] = None,
    image_root: Optional[PathLike] = None,
    **kw,
) -> None:
    """Register a pedestrian data set: records in the contract's format, metadata for evaluation.

    Args:
        name: data set name.
        source: a generic pedestrian ``.json``, a CityPersons ``anno_*.mat``, a CrowdHuman
            ``.odgt``, an ECP labels folder (``labels/<split>``, with ``protocol="ecp"``), a Caltech root
            folder (then ``split=`` and optionally ``new_annotations=``/``step=`` in ``kw``;
            frames are extracted into ``image_root`` on first use), or a callable returning
            records. Nothing is read before ``DatasetCatalog.get(name)``. A ``.json`` source
            takes ``categories=`` (names or ids of its pedestrian categories, default
            "person"/"pedestrian"; see ``docs/datasets.md``). A CityPersons ``.mat`` takes
            ``classes=`` (its target labels, one class each, e.g. ``CITYPERSONS_MULTICLASS``;
            they become the ``thing_classes``).
        protocol: a key of EVALUATOR_OF_PROTOCOL ("citypersons", "caltech", "ecp",
            "crowdhuman"; the evaluator's rules); implied by .mat, .odgt and Caltech sources,
            required otherwise.
        image_root: folder the images are relative to (``leftImg8bit/<split>`` for CityPersons).
        kw: extra source options (Caltech) and extra metadata.
    """
    source_opts = {k: kw.pop(k) for k in ("split", "new_annotations", "step", "categories", "classes") if k in kw}
    if "classes" in source_opts:
        kw.setdefault("thing_classes", list(source_opts["classes"]))
    if callable(source):
        loader, implied = source, None
    else:
        kind = _source_kind(source, protocol)
        factory, implied = _SOURCE_KINDS[kind]
        if "classes" in source_opts and kind != "citypersons_mat":
            raise ValueError(
                f"register_pedestrian_dataset({name!r}): classes= is for CityPersons .mat sources, not {source}"
            )
        if image_root is None:
            raise ValueError(f"register_pedestrian_dataset({name!r}): image_root is required for {source}")
        loader = factory(source, image_root, **source_opts)
        if kind == "json":
            kw.setdefault("json_file", str(source))
    protocol = protocol or implied
    if protocol not in PROTOCOLS:
        raise ValueError(f"register_pedestrian_dataset({name!r}): protocol must be one of {PROTOCOLS}, got {protocol!r}")
    DatasetCatalog.register(name, loader)
    metadata = {"thing_classes": ["person"], "evaluator_type": EVALUATOR_OF_PROTOCOL[protocol], "protocol": protocol,
                **kw}
    if image_root is not None:
        metadata["image_root"] = str(image_root)
    MetadataCatalog.get(name).set(**metadata)


class UnregisteredDatasetError(KeyError):
    """A config (or option) names a data set this process has not registered; says what to pass."""

    def __str__(self) -> str:
        return self.args[0]


def require_registered(name: str, key: str) -> str:
    """``name`` when it is a registered data set; else :class:`UnregisteredDatasetError` saying in
    one line what to pass for ``key`` (a config key such as ``DATASETS.TEST``, or an option such as
    ``--eval-dataset``). A run folder's config may name a data set only the program that trained it
    registered (a script of one's own, the demo with non-default data)."""
    if name in DatasetCatalog.list():
        return name
    split = "_" + name.rsplit("_", 1)[-1]
    builtins = [n for n in _builtin_loaders() if n.endswith(split)] or list(_builtin_loaders())
    value = f"{key} NAME" if key.startswith("--") else f"{key} \"('NAME',)\""
    raise UnregisteredDatasetError(
        f"Data set {name!r} ({key}) is not registered in this process: pass {value} with a registered name "
        f"(built in: {', '.join(builtins)}) or add its JSON file to DATASETS.PEDESTRIAN_JSON.FILES (datasets/README.md)"
    )


def _parse_json_entry(entry: str) -> Tuple[str, Path]:
    name, sep, json_file = entry.partition("=")
    if not sep or not name.strip() or not json_file.strip():
        raise ValueError(
            f"DATASETS.PEDESTRIAN_JSON.FILES entry {entry!r}: expected 'NAME=path/to/file.json'"
        )
    return name.strip(), Path(json_file.strip())


def register_config_datasets(cfg: CfgNode) -> List[str]:
    """Register the JSON data sets named by ``cfg.DATASETS.PEDESTRIAN_JSON`` and return their
    names. A name already registered from the same file is left as it is (calling this twice is
    harmless); one registered otherwise is an error naming the entry."""
    spec = cfg.DATASETS.PEDESTRIAN_JSON
    names = []
    for entry in spec.FILES:
        name, json_file = _parse_json_entry(entry)
        if not json_file.is_file():
            raise FileNotFoundError(f"DATASETS.PEDESTRIAN_JSON.FILES entry {entry!r}: {json_file} not found")
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") != str(json_file):
                raise ValueError(
                    f"DATASETS.PEDESTRIAN_JSON.FILES entry {entry!r}: {name!r} is already registered "
                    f"from {MetadataCatalog.get(name).get('json_file', 'elsewhere')}; choose another name"
                )
        else:
            register_pedestrian_dataset(
                name, json_file, protocol=spec.PROTOCOL, image_root=spec.IMAGE_ROOT or json_file.parent,
                categories=list(spec.CATEGORIES) or None,
            )
            logger.info("Registered %s from %s (protocol %s)", name, json_file, spec.PROTOCOL)
        names.append(name)
    return names


# ------------------------------------------------------------------ built-in names
def ensure_synthetic(root: Optional[Path] = None) -> Path:
    """``<root>/synthetic``, generated (atomically, logged) with SYNTHETIC_DEFAULTS if absent."""
    dest = (root or datasets_root()) / "synthetic"
    if not dest.is_dir():
        opts = dict(SYNTHETIC_DEFAULTS)
        logger.info("Generating synthetic pedestrian data %s into %s (first use)", opts, dest)
        cfg = SyntheticConfig(width=opts["width"], height=opts["height"], scale=opts["scale"], seed=opts["seed"])
        try:
            generate_synthetic(dest, opts["num_train"], opts["num_val"], cfg, extract_caltech=True)
        except (FileExistsError, OSError):
            if not dest.is_dir():  # not another process having finished first
                raise
    return dest


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found. {how} (see docs/datasets.md)")
    return path


def _citypersons(split: str, synthetic: bool, classes=CITYPERSONS_CLASSES) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        root = ensure_synthetic() / "citypersons" if synthetic else datasets_root() / "citypersons"
        how = "Put the official anno_*.mat files in citypersons/annotations/ and Cityscapes' leftImg8bit/ beside"
        mat = _require(root / "annotations" / f"anno_{split}.mat", how)
        return load_citypersons(mat, _require(root / "leftImg8bit" / split, how), classes=classes)

    return load


def _caltech(split: str, synthetic: bool, new: bool = False) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        root = ensure_synthetic() / "caltech" if synthetic else datasets_root() / "caltech"
        out = root / "prepared"
        json_name = f"{split}_new.json" if new else f"{split}.json"
        extra = f" --new-annotations {root}/anno_test_1xnew" if new else ""
        how = f"Prepare it with: python datasets/prepare_caltech.py {root} --split {split} --out-dir {out}{extra}"
        return load_pedestrian_json(_require(out / json_name, how), out / "images")

    return load


# A synthetic/ tree generated before the CrowdHuman / ECP formats existed lacks them.
_REGENERATE = "Delete the synthetic/ folder to have it generated again with every format"


def _crowdhuman(split: str, synthetic: bool) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        root = ensure_synthetic() / "crowdhuman" if synthetic else datasets_root() / "crowdhuman"
        how = (_REGENERATE if synthetic else
               "Put CrowdHuman's annotation_{train,val}.odgt in crowdhuman/ and its images in crowdhuman/Images/")
        return load_crowdhuman(_require(root / f"annotation_{split}.odgt", how), _require(root / "Images", how))

    return load


def _ecp(time: str, split: str, synthetic: bool) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        root = (ensure_synthetic() / "ecp" if synthetic else datasets_root() / "ECP") / time
        how = _REGENERATE if synthetic else (
            f"Unpack EuroCity Persons so that ECP/{time}/labels/{split}/ and ECP/{time}/img/{split}/ exist")
        return load_ecp(_require(root / "labels" / split, how), _require(root / "img" / split, how))

    return load


# built-in name prefix -> protocol
_BUILTIN_PROTOCOLS = (("crowdhuman", "crowdhuman"), ("ecp", "ecp"), ("caltech", "caltech"))


def _builtin_protocol(name: str) -> str:
    for part, protocol in _BUILTIN_PROTOCOLS:
        if part in name:
            return protocol
    return "citypersons"


def _builtin_loaders() -> Dict[str, Callable[[], List[Dict]]]:
    return {
        "caltech_train_10x": _caltech("train_10x", False),
        "caltech_train_1x": _caltech("train_1x", False),
        "caltech_test": _caltech("test", False),
        "caltech_test_new": _caltech("test", False, new=True),
        "citypersons_train": _citypersons("train", False),
        "citypersons_val": _citypersons("val", False),
        "synthetic_citypersons_train": _citypersons("train", True),
        "synthetic_citypersons_val": _citypersons("val", True),
        **{f"{prefix}citypersons_multiclass_{split}":
           _citypersons(split, prefix == "synthetic_", CITYPERSONS_MULTICLASS)
           for prefix in ("", "synthetic_") for split in ("train", "val")},
        "synthetic_caltech_train": _caltech("train", True),
        "synthetic_caltech_test": _caltech("test", True),
        "crowdhuman_train": _crowdhuman("train", False),
        "crowdhuman_val": _crowdhuman("val", False),
        "synthetic_crowdhuman_train": _crowdhuman("train", True),
        "synthetic_crowdhuman_val": _crowdhuman("val", True),
        "ecp_day_train": _ecp("day", "train", False),
        "ecp_day_val": _ecp("day", "val", False),
        "ecp_night_train": _ecp("night", "train", False),
        "ecp_night_val": _ecp("night", "val", False),
        "synthetic_ecp_train": _ecp("day", "train", True),
        "synthetic_ecp_val": _ecp("day", "val", True),
    }


def register_all_pedestrian() -> None:
    """Register every built-in name (lazy: nothing is read or generated until used); the
    ``*citypersons_multiclass_*`` names have the classes of ``CITYPERSONS_MULTICLASS``."""
    for name, loader in _builtin_loaders().items():
        if name in DatasetCatalog.list():
            continue
        classes = {"thing_classes": list(CITYPERSONS_MULTICLASS)} if "_multiclass_" in name else {}
        register_pedestrian_dataset(name, loader, protocol=_builtin_protocol(name), **classes)


register_all_pedestrian()

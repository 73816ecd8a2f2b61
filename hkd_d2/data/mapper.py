"""Dataset mapper for pedestrian records: ignore regions kept as flagged instances."""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.transforms import TransformList
from detectron2.structures import BoxMode, Instances

from .pedestrian_json import PedestrianDataError

__all__ = ["PedestrianDatasetMapper"]


def _is_ignore(annotation: Dict) -> bool:
    """An annotation is an ignore region when its ``"ignore"`` flag (or, for COCO-style
    records without one, its ``"iscrowd"`` flag) is set."""
    return bool(annotation.get("ignore", annotation.get("iscrowd", 0)))


def _several_classes(cfg) -> bool:
    """Whether the training data sets have several ``thing_classes`` (then MODEL.ROI_HEADS.NUM_CLASSES
    must be their number, else a ValueError naming both)."""
    counts = {len(MetadataCatalog.get(d).get("thing_classes", [])) for d in cfg.DATASETS.TRAIN}
    if max(counts, default=1) <= 1:
        return False
    if counts != {cfg.MODEL.ROI_HEADS.NUM_CLASSES}:
        raise ValueError(
            f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} have {sorted(counts)} classes (thing_classes), "
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
        )
    return True


def _has_area(annotation: Dict) -> bool:
    """Whether a box has width and height > 0 (records keep those without, for evaluation; the
    transforms would turn a box with x1 < x0 into a valid one)."""
    width, height = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYWH_ABS)[2:]
    return width > 0 and height > 0


class PedestrianDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` for the pedestrian records of hkd_d2.

    In training, each image's ``"instances"`` hold ``gt_boxes``, ``gt_classes`` (0 for all: one
    person class; each annotation's ``category_id`` when ``keep_classes``: the training data sets
    have several ``thing_classes``)
    and, when ``keep_ignore`` is on, ``gt_ignore`` (bool): the record's ignore annotations
    (``"ignore": 1``) stay as instances flagged True, for the ignore-aware RPN and box
    head; when it is off they are dropped, as Detectron2 drops crowd boxes. Boxes without
    area (width or height <= 0) and boxes that the transforms leave empty are dropped.
    Inference is Detectron2's. An image that cannot be read (truncated, not an image) raises
    :class:`PedestrianDataError` naming its file.
    """

    @configurable
    def __init__(self, is_train: bool, *, keep_ignore: bool = True, keep_classes: bool = False, **kwargs):
        """
        Args:
            is_train: whether the mapper is used for training.
            keep_ignore: keep ignore annotations as ``gt_ignore=True`` instances.
            keep_classes: ``gt_classes`` from the annotations' ``category_id`` (else all 0).
            kwargs: arguments of :class:`DatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        self.keep_ignore = keep_ignore
        self.keep_classes = keep_classes

    def __call__(self, dataset_dict: Dict) -> Dict:
        try:
            return super().__call__(dataset_dict)
        except OSError as e:  # PIL: "image file is truncated", UnidentifiedImageError, ...
            name = dataset_dict.get("file_name", "<no file_name>")
            raise PedestrianDataError(f"cannot read image {name}: {e}") from e

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        ret = super().from_config(cfg, is_train)
        ret["keep_ignore"] = cfg.MODEL.IGNORE_REGIONS.ENABLED
        ret["keep_classes"] = _several_classes(cfg)
        return ret

    def _transform_annotations(
        self, dataset_dict: Dict, transforms: TransformList, image_shape
    ) -> None:
        """Replace ``dataset_dict["annotations"]`` by ``dataset_dict["instances"]``."""
        annos: List[Dict] = [
            a for a in dataset_dict.pop("annotations") if self.keep_ignore or not _is_ignore(a)
        ]
        for a in annos:
            if "bbox" not in a or "bbox_mode" not in a:
                raise ValueError(
                    f"Annotation without 'bbox'/'bbox_mode' in record of "
                    f"{dataset_dict.get('file_name', '<no file_name>')}: {a}"
                )
        annos = [a for a in annos if _has_area(a)]
        ignore = torch.tensor([_is_ignore(a) for a in annos], dtype=torch.bool)
        annos = [
            utils.transform_instance_annotations(
                {"bbox": a["bbox"], "bbox_mode": a["bbox_mode"],
                 "category_id": a.get("category_id", 0) if self.keep_classes else 0},
                transforms,
                image_shape,
            )
            for a in annos
        ]
        instances: Instances = utils.annotations_to_instances(annos, image_shape)
        if self.keep_ignore:
            instances.gt_ignore = ignore
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

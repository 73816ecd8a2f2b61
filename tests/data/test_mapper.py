"""PedestrianDatasetMapper: ignore annotations, single class, degenerate boxes."""
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from hkd_d2.config import add_hkd_config
from hkd_d2.data import PedestrianDatasetMapper
from hkd_d2.data.pedestrian_json import PedestrianDataError

HEIGHT, WIDTH = 64, 96


def _annotation(bbox, ignore):
    return {
        "bbox": bbox,
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,
        "vis_bbox": bbox,
        "vis_ratio": 1.0,
        "ignore": ignore,
        "label": "ignore region" if ignore else "pedestrian",
    }


@pytest.fixture
def record(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    return {
        "file_name": str(path),
        "image_id": 0,
        "height": HEIGHT,
        "width": WIDTH,
        "annotations": [
            _annotation([10.0, 10.0, 20.0, 50.0], 0),
            _annotation([50.0, 5.0, 40.0, 55.0], 1),
            _annotation([30.0, 30.0, 0.0, 20.0], 0),  # zero width: dropped
        ],
    }


def _mapper(ignore_enabled: bool, is_train: bool = True) -> PedestrianDatasetMapper:
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.IGNORE_REGIONS.ENABLED = ignore_enabled
    cfg.INPUT.MIN_SIZE_TRAIN = (HEIGHT,)
    cfg.INPUT.MAX_SIZE_TRAIN = WIDTH
    cfg.INPUT.MIN_SIZE_TEST = HEIGHT
    cfg.INPUT.MAX_SIZE_TEST = WIDTH
    cfg.INPUT.RANDOM_FLIP = "none"
    return PedestrianDatasetMapper(cfg, is_train)


def test_keeps_ignore_annotations_flagged(record):
    out = _mapper(ignore_enabled=True)(record)
    instances = out["instances"]
    assert out["image"].shape == (3, HEIGHT, WIDTH)
    assert instances.gt_boxes.tensor.tolist() == [[10.0, 10.0, 30.0, 60.0], [50.0, 5.0, 90.0, 60.0]]
    assert instances.gt_ignore.tolist() == [False, True]
    assert instances.gt_classes.tolist() == [0, 0]


def test_drops_ignore_annotations_when_switched_off(record):
    instances = _mapper(ignore_enabled=False)(record)["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[10.0, 10.0, 30.0, 60.0]]
    assert not instances.has("gt_ignore")


def test_all_classes_are_person_and_iscrowd_not_required(record):
    for anno in record["annotations"]:
        anno["category_id"] = 3
    instances = _mapper(ignore_enabled=True)(record)["instances"]
    assert instances.gt_classes.tolist() == [0, 0]


def test_iscrowd_counts_as_ignore_without_ignore_flag(record):
    for anno in record["annotations"]:
        anno["iscrowd"] = anno.pop("ignore")
    assert _mapper(ignore_enabled=True)(record)["instances"].gt_ignore.tolist() == [False, True]


def test_boxes_follow_transforms_and_flags_follow_boxes(record):
    mapper = PedestrianDatasetMapper(
        True, augmentations=[T.RandomFlip(prob=1.0)], image_format="BGR", keep_ignore=True
    )
    instances = mapper(record)["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[66.0, 10.0, 86.0, 60.0], [6.0, 5.0, 46.0, 60.0]]
    assert instances.gt_ignore.tolist() == [False, True]


def test_boxes_cropped_away_are_dropped(record):
    mapper = PedestrianDatasetMapper(
        True,
        augmentations=[T.CropTransform(0, 0, 40, HEIGHT)],
        image_format="BGR",
        keep_ignore=True,
    )
    instances = mapper(record)["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[10.0, 10.0, 30.0, 60.0]]
    assert instances.gt_ignore.tolist() == [False]


def test_inference_has_no_instances(record):
    out = _mapper(ignore_enabled=True, is_train=False)(record)
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, HEIGHT, WIDTH)


def test_malformed_annotation_names_the_file(record):
    del record["annotations"][0]["bbox"]
    with pytest.raises(ValueError, match="image.png"):
        _mapper(ignore_enabled=True)(record)


def test_image_without_annotations(record):
    record["annotations"] = []
    instances = _mapper(ignore_enabled=True)(record)["instances"]
    assert len(instances) == 0
    assert instances.gt_ignore.dtype == torch.bool


def test_truncated_image_names_its_file(record, tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    record["file_name"] = str(path)
    with pytest.raises(PedestrianDataError, match=f"cannot read image {path}: .*truncated"):
        _mapper(True)(record)

"""Generic pedestrian JSON: reading (file_name / im_name), writing, round trip, bad input."""
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from hkd_d2.data.pedestrian_json import (
    PedestrianDataError,
    load_pedestrian_json,
    make_annotation,
    save_pedestrian_json,
)


def _image(path: Path, h: int = 32, w: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))
    return path


def test_reads_val_gt_style_im_name_in_city_folder(tmp_path):
    _image(tmp_path / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png")
    data = {
        "images": [{"id": 7, "im_name": "frankfurt_000000_000294_leftImg8bit.png", "height": 1024, "width": 2048}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "ignore": 0, "bbox": [947, 406, 17, 40],
             "vis_bbox": [950, 407, 14, 39], "height": 40, "vis_ratio": 0.802941176471},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1, "ignore": 1, "bbox": [1, 2, 0, 5]},
        ],
        "categories": [{"id": 1, "name": "pedestrian"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (rec,) = load_pedestrian_json(tmp_path / "gt.json", tmp_path)
    assert rec["image_id"] == 7 and (rec["height"], rec["width"]) == (1024, 2048)
    assert rec["file_name"] == str((tmp_path / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png").resolve())
    (ann,) = rec["annotations"]  # the degenerate (w=0) box is dropped
    assert ann["bbox"] == [947, 406, 17, 40] and ann["vis_bbox"] == [950, 407, 14, 39]
    assert ann["vis_ratio"] == 0.802941176471 and ann["ignore"] == 0
    assert ann["label"] == "pedestrian" and ann["category_id"] == 0


def test_round_trip_and_image_size_from_file(tmp_path):
    _image(tmp_path / "img" / "a.png", 20, 30)
    records = [{
        "file_name": str(tmp_path / "img" / "a.png"), "image_id": 1, "height": 20, "width": 30,
        "annotations": [make_annotation([1, 2, 4, 10], [1, 2, 4, 5], 0, "person"),
                        make_annotation([5, 2, 4, 10], None, 1, "people")],
    }]
    save_pedestrian_json(records, tmp_path / "out.json", tmp_path / "img")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["images"][0]["file_name"] == "a.png"
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 1]
    del data["images"][0]["height"], data["images"][0]["width"]
    (tmp_path / "nosize.json").write_text(json.dumps(data))
    back = load_pedestrian_json(tmp_path / "nosize.json", tmp_path / "img")
    assert back[0]["height"] == 20 and back[0]["width"] == 30
    assert back[0]["annotations"] == records[0]["annotations"]
    assert back[0]["annotations"][0]["vis_ratio"] == 0.5


def test_malformed_json_names_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PedestrianDataError, match="bad.json"):
        load_pedestrian_json(bad, tmp_path)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(PedestrianDataError, match="bad.json"):
        load_pedestrian_json(bad, tmp_path)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "annotations": [{"image_id": 1, "bbox": [1]}]}))
    with pytest.raises(PedestrianDataError, match="bad.json"):
        load_pedestrian_json(bad, tmp_path)


def test_missing_image_and_file(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "file_name": "missing.png", "height": 2, "width": 2}]}))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_pedestrian_json(gt, tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_pedestrian_json(tmp_path / "nothere.json", tmp_path)


def _one_image_json(tmp_path: Path, images, annotations) -> Path:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_coordinates_are_refused_with_file_and_entry(tmp_path, value):
    path = _one_image_json(tmp_path, [{"id": 1, "file_name": "a.png", "height": 32, "width": 48}],
                           [{"id": 9, "image_id": 1, "bbox": [1, 2, value, 10]}])
    with pytest.raises(PedestrianDataError, match=r"gt.json: malformed annotation 9: .*non-finite"):
        load_pedestrian_json(path, tmp_path)


def test_unknown_and_duplicate_image_ids_are_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 32, "width": 48}]
    path = _one_image_json(tmp_path, images, [{"id": 4, "image_id": 2, "bbox": [1, 2, 3, 10]}])
    with pytest.raises(PedestrianDataError, match="gt.json: annotation 4 refers to image id 2, which is not in 'images'"):
        load_pedestrian_json(path, tmp_path)
    path = _one_image_json(tmp_path, images + [{"id": 1, "file_name": "b.png"}], [])
    with pytest.raises(PedestrianDataError, match=r"gt.json: duplicate image id 1 \('a.png' and 'b.png'\)"):
        load_pedestrian_json(path, tmp_path)


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_dropped_degenerate_boxes_are_counted_once_per_file(tmp_path):
    images = [{"id": i, "file_name": n, "height": 32, "width": 48} for i, n in ((1, "a.png"), (2, "b.png"))]
    anns = [{"id": k, "image_id": 1 + k % 2, "bbox": [1, 2, 0 if k < 3 else 4, 10]} for k in range(5)]
    logger, handler = logging.getLogger("hkd_d2.data.pedestrian_json"), _Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        records = load_pedestrian_json(_one_image_json(tmp_path, images, anns), tmp_path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sum(len(r["annotations"]) for r in records) == 2
    dropped = [m for m in handler.messages if "degenerate boxes" in m]
    assert dropped == [f"{tmp_path / 'gt.json'}: dropped 3 degenerate boxes (w<=0 or h<=0) in 2 images"]

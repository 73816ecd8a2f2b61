"""Generic pedestrian JSON: reading (file_name / im_name), writing, round trip, bad input."""
import json
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

"""CityPersons .mat reader: the official val_gt.json is reproduced; dtype pitfalls; bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from hkd_d2.data.citypersons import (
    CITYPERSONS_MULTICLASS,
    load_citypersons,
    read_citypersons_mat,
    write_citypersons_mat,
)
from hkd_d2.data.pedestrian_json import PedestrianDataError, records_to_coco
from ..conftest import REFERENCE as SHARED_REFERENCE

REFERENCE = SHARED_REFERENCE / "citypersons"


def _significant12(x: float) -> float:
    return float(f"{x:.12g}")


def test_anno_val_reproduces_official_val_gt():
    if not (REFERENCE / "anno_val.mat").is_file():
        pytest.skip(f"reference data {REFERENCE} not present")
    records = load_citypersons(REFERENCE / "anno_val.mat", REFERENCE / "no_images", require_images=False)
    ours = records_to_coco(records)
    official = json.loads((REFERENCE / "val_gt.json").read_text())
    assert len(ours["images"]) == len(official["images"]) == 500
    for a, b in zip(ours["images"], official["images"]):
        assert (a["id"], a["im_name"], a["height"], a["width"]) == (b["id"], b["im_name"], b["height"], b["width"])
    assert len(ours["annotations"]) == len(official["annotations"]) == 5795
    for a, b in zip(ours["annotations"], official["annotations"]):
        assert a["image_id"] == b["image_id"]
        assert a["bbox"] == b["bbox"] and a["vis_bbox"] == b["vis_bbox"] and a["height"] == b["height"]
        assert a["ignore"] == b["ignore"] and a["iscrowd"] == b["iscrowd"]
        assert _significant12(a["vis_ratio"]) == b["vis_ratio"]


def test_uint8_bbs_and_negative_x(tmp_path):
    # bbs stored as uint8 in the file: x1_vis + w_vis would overflow in uint8 arithmetic
    cell = np.empty((1, 2), dtype=object)
    dtype = [("cityname", object), ("im_name", object), ("bbs", object)]
    rows = {
        "b_leftImg8bit.png": np.array([[1, 200, 100, 100, 250, 7, 200, 100, 100, 125]], np.uint8),
        "a_leftImg8bit.png": np.array([[5, -3, 10, 41, 100, 8, 0, 0, 0, 0], [0, 1, 1, 0, 5, 9, 1, 1, 0, 5]], np.int16),
    }
    for i, (name, bbs) in enumerate(rows.items()):
        s = np.empty((1, 1), dtype=dtype)
        s[0, 0] = ("city", name, bbs)
        cell[0, i] = s
    scipy.io.savemat(tmp_path / "anno_val.mat", {"anno_val_aligned": cell})
    entries = read_citypersons_mat(tmp_path / "anno_val.mat")
    assert all(e[2].dtype == np.int64 for e in entries)
    recs = load_citypersons(tmp_path / "anno_val.mat", tmp_path, require_images=False)
    assert [r["file_name"].endswith(n) for r, n in zip(recs, ["a_leftImg8bit.png", "b_leftImg8bit.png"])] == [True, True]
    (group,) = recs[0]["annotations"]  # degenerate ignore row dropped
    assert group["bbox"] == [-3, 10, 41, 100] and group["label"] == "people group" and group["ignore"] == 1
    (ped,) = recs[1]["annotations"]
    assert ped["bbox"] == [200, 100, 100, 250] and ped["ignore"] == 0 and ped["label"] == "pedestrian"
    assert ped["vis_ratio"] == pytest.approx(0.5)
    assert (recs[1]["height"], recs[1]["width"]) == (1024, 2048)


def test_write_then_read_official_layout(tmp_path):
    bbs = np.array([[2, 10, 20, 41, 100, 1, 10, 20, 41, 50]])
    write_citypersons_mat(tmp_path / "anno_train.mat", "train", [("bochum", "x_leftImg8bit.png", bbs)])
    mat = scipy.io.loadmat(tmp_path / "anno_train.mat")
    struct = mat["anno_train_aligned"][0, 0][0, 0]
    assert struct.dtype.names == ("cityname", "im_name", "bbs")
    assert str(struct["cityname"][0]) == "bochum" and struct["bbs"].shape == (1, 10)
    (entry,) = read_citypersons_mat(tmp_path / "anno_train.mat")
    assert entry[0] == "bochum" and entry[2].tolist() == bbs.tolist()


def test_bad_input(tmp_path):
    scipy.io.savemat(tmp_path / "wrong.mat", {"something": np.zeros(3)})
    with pytest.raises(PedestrianDataError, match="wrong.mat"):
        read_citypersons_mat(tmp_path / "wrong.mat")
    with pytest.raises(FileNotFoundError, match="absent.mat"):
        read_citypersons_mat(tmp_path / "absent.mat")
    write_citypersons_mat(tmp_path / "anno_val.mat", "val", [("c", "c_1_leftImg8bit.png", np.zeros((0, 10)))])
    with pytest.raises(FileNotFoundError, match="c_1_leftImg8bit.png"):
        load_citypersons(tmp_path / "anno_val.mat", tmp_path)


def test_non_finite_bbs_and_text_named_mat_are_named(tmp_path):
    bbs = np.array([[1, 10, 20, 41, 100, 1, 10, 20, 41, 50], [1, np.nan, 20, 41, 100, 2, 10, 20, 41, 50]])
    write_citypersons_mat(tmp_path / "anno_val.mat", "val", [("c", "c_1_leftImg8bit.png", bbs)])
    with pytest.raises(PedestrianDataError, match=r"anno_val.mat, image c_1_leftImg8bit.png: non-finite values in bbs row 1"):
        read_citypersons_mat(tmp_path / "anno_val.mat")
    (tmp_path / "text.mat").write_text("not a MATLAB file\n" * 20)
    with pytest.raises(PedestrianDataError, match="text.mat: not a readable MATLAB file"):
        read_citypersons_mat(tmp_path / "text.mat")


def test_classes_of_their_own_when_asked(tmp_path):
    # pedestrian, rider, sitting person, other person, ignore region
    bbs = np.array([[label, 10, 20, 41, 100, k, 10, 20, 41, 100] for k, label in enumerate((1, 2, 3, 4, 0))])
    write_citypersons_mat(tmp_path / "anno_val.mat", "val", [("c", "c_1_leftImg8bit.png", bbs)])
    default = load_citypersons(tmp_path / "anno_val.mat", tmp_path, require_images=False)[0]["annotations"]
    assert [(a["category_id"], a["ignore"]) for a in default] == [(0, 0), (0, 1), (0, 1), (0, 1), (0, 1)]
    several = load_citypersons(tmp_path / "anno_val.mat", tmp_path, require_images=False,
                               classes=CITYPERSONS_MULTICLASS)[0]["annotations"]
    assert [(a["label"], a["category_id"], a["ignore"]) for a in several] == [
        ("pedestrian", 0, 0), ("rider", 1, 0), ("sitting person", 2, 0), ("other person", 0, 1),
        ("ignore region", 0, 1)]
    with pytest.raises(ValueError, match="need distinct labels among"):
        load_citypersons(tmp_path / "anno_val.mat", tmp_path, require_images=False, classes=("people group",))

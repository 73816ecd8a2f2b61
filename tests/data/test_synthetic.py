"""Synthetic generator: both formats round-trip through the readers to its own ground truth."""
import json

import numpy as np
import pytest

from hkd_d2.data.caltech import SeqFile, prepare_caltech
from hkd_d2.data.citypersons import load_citypersons, read_citypersons_mat
from hkd_d2.data.pedestrian_json import load_pedestrian_json
from hkd_d2.data.synthetic import PERSON_ASPECT, SyntheticConfig, generate_synthetic, main, render_scene

CFG = SyntheticConfig(width=96, height=72, seed=3, frames_per_video=4, objects_per_image=(2, 5))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    gt = generate_synthetic(out, 6, 3, CFG, workers=0)
    return out, gt


def _strip(records):
    return [(r["image_id"], r["height"], r["width"], r["annotations"]) for r in records]


def test_citypersons_round_trip(generated):
    out, gt = generated
    for split in ("train", "val"):
        root = out / "citypersons"
        recs = load_citypersons(root / "annotations" / f"anno_{split}.mat", root / "leftImg8bit" / split)
        truth = load_pedestrian_json(root / f"ground_truth_{split}.json", root / "leftImg8bit" / split)
        assert _strip(recs) == _strip(truth)
        assert [r["file_name"] for r in recs] == [r["file_name"] for r in truth]
        assert len(recs) == (6 if split == "train" else 3)
        assert sum(len(r["annotations"]) for r in recs) > 0


def test_caltech_round_trip(generated, tmp_path):
    out, gt = generated
    root = out / "caltech"
    assert SeqFile(root / "set00" / "V000.seq").num_frames == 4
    for split, key in (("train", "train_1x"), ("test", "test")):
        json_file = prepare_caltech(root, key, tmp_path / "prep", step=1, json_name=f"{split}.json")
        recs = load_pedestrian_json(json_file, tmp_path / "prep" / "images")
        truth = load_pedestrian_json(root / f"ground_truth_{split}.json", tmp_path / "prep" / "images")
        assert _strip(recs) == _strip(truth)
    frame = SeqFile(root / "set00" / "V000.seq").frame(1)
    image, _ = render_scene(CFG, 0, 1)
    assert frame.shape == (72, 96, 3) and np.abs(frame.astype(int) - image).mean() < 8  # JPEG, lossy


def test_labels_ignore_and_boxes(generated):
    _, gt = generated
    anns = [a for r in gt["citypersons_train"] + gt["citypersons_val"] for a in r["annotations"]]
    for a in anns:
        assert a["ignore"] == int(a["label"] != "pedestrian")
        assert all(float(v).is_integer() for v in a["bbox"] + a["vis_bbox"])
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= CFG.width and y + h <= CFG.height
        if a["label"] == "pedestrian":
            assert w == round(PERSON_ASPECT * h)
        vx, vy, vw, vh = a["vis_bbox"]
        assert x <= vx and y <= vy and vx + vw <= x + w and vy + vh <= y + h
    caltech = {a["label"] for r in gt["caltech_train"] for a in r["annotations"]}
    assert caltech <= {"person", "people", "person?", "person-fa"}


def test_deterministic_by_seed(tmp_path):
    a, objs_a = render_scene(CFG, 0, 5)
    b, objs_b = render_scene(CFG, 0, 5)
    c, _ = render_scene(SyntheticConfig(width=96, height=72, seed=4), 0, 5)
    assert np.array_equal(a, b) and objs_a == objs_b and not np.array_equal(a, c)
    gt1 = generate_synthetic(tmp_path / "one", 3, 1, CFG, formats=("citypersons",), workers=0)
    gt2 = generate_synthetic(tmp_path / "two", 3, 1, CFG, formats=("citypersons",), workers=2)
    assert gt1 == gt2
    png = "citypersons/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert (tmp_path / "one" / png).read_bytes() == (tmp_path / "two" / png).read_bytes()


def test_height_distribution_scales_with_image():
    cfg = SyntheticConfig(width=640, height=480, seed=0)
    heights = [o.box[3] for i in range(40) for o in render_scene(cfg, 0, i)[1] if o.kind == "pedestrian"]
    assert 30 <= np.median(heights) <= 80 and max(heights) > 100


def test_cli_and_no_overwrite(tmp_path):
    main(["--out", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--width", "64", "--height", "48",
          "--format", "caltech", "--workers", "0"])
    truth = json.loads((tmp_path / "cli" / "caltech" / "ground_truth_test.json").read_text())
    assert len(truth["images"]) == 1 and not (tmp_path / "cli" / "citypersons").exists()
    with pytest.raises(FileExistsError):
        generate_synthetic(tmp_path / "cli", 1, 1, CFG, workers=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]  # no temp folder left behind


def test_riders_as_a_class_of_their_own_change_only_the_ground_truth(tmp_path):
    weights = {"pedestrian": 0.6, "rider": 0.4}
    plain = SyntheticConfig(width=96, height=72, seed=3, objects_per_image=(2, 5), kind_weights=weights)
    two = SyntheticConfig(width=96, height=72, seed=3, objects_per_image=(2, 5), kind_weights=weights,
                          classes=("pedestrian", "rider"))
    gt_plain = generate_synthetic(tmp_path / "plain", 3, 1, plain, formats=("citypersons", "caltech"), workers=0)
    gt_two = generate_synthetic(tmp_path / "two", 3, 1, two, formats=("citypersons", "caltech"), workers=0)
    png = "citypersons/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert (tmp_path / "plain" / png).read_bytes() == (tmp_path / "two" / png).read_bytes()
    mat = "citypersons/annotations/anno_train.mat"
    rows = [[e[2].tolist() for e in read_citypersons_mat(tmp_path / d / mat)] for d in ("plain", "two")]
    assert rows[0] == rows[1]  # the labels stay CityPersons' (2 = rider)
    assert gt_two["caltech_train"] == gt_plain["caltech_train"]  # Caltech has no rider class
    root = tmp_path / "two" / "citypersons"
    recs = load_citypersons(root / "annotations" / "anno_train.mat", root / "leftImg8bit" / "train",
                            classes=("pedestrian", "rider"))
    assert _strip(recs) == _strip(gt_two["citypersons_train"])
    riders = [a for r in recs for a in r["annotations"] if a["label"] == "rider"]
    assert riders and all(a["category_id"] == 1 and a["ignore"] == 0 for a in riders)
    truth = json.loads((root / "ground_truth_train.json").read_text())
    assert truth["categories"] == [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "rider"}]
    assert {a["category_id"] for a in truth["annotations"] if a["label"] == "rider"} == {2}
    plain_truth = json.loads((tmp_path / "plain" / "citypersons" / "ground_truth_train.json").read_text())
    assert plain_truth["categories"] == [{"id": 1, "name": "person"}]
    with pytest.raises(ValueError, match="SyntheticConfig.classes"):
        generate_synthetic(tmp_path / "bad", 1, 1, SyntheticConfig(width=96, height=72, classes=("group",)),
                           formats=("citypersons",), workers=0)

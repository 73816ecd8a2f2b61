"""CrowdHuman: .odgt reader, AP / MR^-2 / JI on a hand-made case (values derived from CrowdDet's
database.py / image.py / compute_JI.py definitions), generated data evaluated end to end."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from hkd_d2.data.crowdhuman import load_crowdhuman, read_odgt, with_training_box
from hkd_d2.data.pedestrian_json import PedestrianDataError
from hkd_d2.data.register import register_pedestrian_dataset
from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.evaluation import build_evaluator
from hkd_d2.evaluation.crowdhuman import crowdhuman_metrics, images_from_odgt
from hkd_d2.tools.crowdhuman_eval import main as crowdhuman_main

GT = [
    {"ID": "a", "width": 100, "height": 100, "gtboxes": [
        {"tag": "person", "fbox": [0, 0, 10, 20], "vbox": [0, 0, 10, 10], "hbox": [2, 0, 4, 4]},
        {"tag": "person", "fbox": [50, 0, 10, 20], "vbox": [50, 0, 10, 20]},
        {"tag": "mask", "fbox": [20, 50, 40, 40], "vbox": [20, 50, 40, 40]},
    ]},
    {"ID": "b", "width": 100, "height": 100, "gtboxes": [
        {"tag": "person", "fbox": [0, 0, 10, 20], "vbox": [0, 0, 10, 20], "extra": {"ignore": 0}},
    ]},
]
DT = [
    {"ID": "a", "width": 100, "height": 100, "dtboxes": [
        {"box": [0, 0, 10, 20], "score": 0.9},  # TP on the first person
        {"box": [25, 55, 10, 10], "score": 0.8},  # inside the mask: dropped
        {"box": [80, 60, 10, 10], "score": 0.7},  # FP
    ]},
    {"ID": "b", "width": 100, "height": 100, "dtboxes": [{"box": [0, 0, 10, 20], "score": 0.6}]},
]


def test_hand_made_case():
    """Counted list: .9 TP, .7 FP, .6 TP of 3 targets in 2 images.

    AP: points (1/3, 1), (1/3, 1/2), (2/3, 2/3) -> (1/3) * (1/2 + 2/3) / 2 = 7/36.
    MR: FPPI 0, .5, .5 / miss 2/3, 2/3, 1/3; refs <= .5 take the first FPPI >= ref (miss 2/3, 7
    refs), .5623 and 1 none -> the last (1/3): (2/3)^(7/9) (1/3)^(2/9).
    JI: thresholds 0-0.5 keep all: image a k=1, m=2, n=3-1 (the masked one) -> 1/3; image b 1 ->
    mean 2/3; 0.6 drops b's detection (1/6), 0.7 a's FP (1/4); best 2/3.
    """
    metrics = crowdhuman_metrics(images_from_odgt(GT, DT))
    assert metrics["AP"] == pytest.approx(7 / 36, abs=1e-6)
    assert metrics["MR"] == pytest.approx((2 / 3) ** (7 / 9) * (1 / 3) ** (2 / 9), abs=1e-6)
    assert metrics["JI"] == pytest.approx(2 / 3, abs=1e-5)


def test_extra_ignore_and_no_detections():
    gt = [{"ID": "a", "width": 100, "height": 100, "gtboxes": [
        {"tag": "person", "fbox": [0, 0, 10, 20], "extra": {"ignore": 1}},
        {"tag": "person", "fbox": [50, 0, 10, 20]}]}]
    dt = [{"ID": "a", "width": 100, "height": 100, "dtboxes": [{"box": [0, 0, 10, 20], "score": 0.9},
                                                               {"box": [50, 0, 10, 20], "score": 0.8}]}]
    metrics = crowdhuman_metrics(images_from_odgt(gt, dt))
    assert metrics["AP"] == 0.0 and metrics["MR"] == 0.0  # one point only; miss 0, no clamp
    assert metrics["JI"] == pytest.approx(1.0, abs=1e-5)
    empty = crowdhuman_metrics(images_from_odgt(gt, [{"ID": "a", "dtboxes": []}]))
    assert empty["MR"] == 1.0 and empty["AP"] == 0.0 and empty["JI"] == 0.0


def test_reader_boxes_and_errors(tmp_path):
    odgt = tmp_path / "a.odgt"
    odgt.write_text("".join(json.dumps(e) + "\n" for e in GT))
    records = load_crowdhuman(odgt, tmp_path / "Images")
    anns = records[0]["annotations"]
    assert [a["ignore"] for a in anns] == [0, 0, 1] and anns[0]["hbox"] == [2.0, 0.0, 4.0, 4.0]
    assert anns[0]["bbox"] == [0.0, 0.0, 10.0, 20.0] and anns[0]["vis_bbox"] == [0.0, 0.0, 10.0, 10.0]
    visible = with_training_box(records, "visible")
    assert visible[0]["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0] and records[0]["annotations"][0]["bbox"][3] == 20
    with pytest.raises(ValueError, match="TRAIN_BOX"):
        with_training_box(records, "head")
    odgt.write_text(json.dumps(GT[0]) + "\n{not json\n")
    with pytest.raises(PedestrianDataError, match=r"a\.odgt:2: malformed JSON"):
        read_odgt(odgt)
    odgt.write_text(json.dumps({"ID": "x", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3]}]}) + "\n")
    with pytest.raises(PedestrianDataError, match=r"a\.odgt:1: gtboxes\[0\].*'fbox' must be 4 numbers"):
        read_odgt(odgt)


def test_generated_data_end_to_end(tmp_path):
    """Generated .odgt + images; detections = every person box (score 1): the file path and
    the Detectron2 evaluator agree, MR 0 (miss reaches 0), AP 1 - 1/N (no point at recall 0), JI 1."""
    generate_synthetic(tmp_path / "syn", 2, 4, SyntheticConfig(width=160, height=120, scale=2.0),
                       formats=("crowdhuman",), workers=0)
    root = tmp_path / "syn" / "crowdhuman"
    gt = read_odgt(root / "annotation_val.odgt")
    dt = [{"ID": e["ID"], "width": e["width"], "height": e["height"],
           "dtboxes": [{"box": b["fbox"], "score": 1.0} for b in e["gtboxes"] if b["tag"] == "person"]} for e in gt]
    num_persons = sum(len(e["dtboxes"]) for e in dt)
    assert num_persons > 1
    metrics = crowdhuman_metrics(images_from_odgt(gt, dt))
    assert metrics["MR"] == 0.0 and metrics["AP"] == pytest.approx(1 - 1 / num_persons)
    assert metrics["JI"] == pytest.approx(1.0, abs=1e-5)

    name = "test_crowdhuman_generated"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_pedestrian_dataset(name, root / "annotation_val.odgt", image_root=root / "Images")
    assert MetadataCatalog.get(name).evaluator_type == "crowdhuman"
    evaluator = build_evaluator(None, name, None)
    evaluator.reset()
    for record, det in zip(DatasetCatalog.get(name), dt):
        inst = Instances((record["height"], record["width"]))
        boxes = np.asarray([d["box"] for d in det["dtboxes"]], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        inst.pred_boxes = Boxes(torch.from_numpy(boxes))
        inst.scores = torch.ones(len(boxes))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
    result = evaluator.evaluate()["crowdhuman"]
    assert result == pytest.approx({k: 100 * v for k, v in metrics.items()}, abs=1e-4)


def test_train_box_visible_reaches_the_training_batches(tmp_path):
    from detectron2.config import get_cfg

    from hkd_d2.config import add_hkd_config
    from hkd_d2.engine.trainer import Trainer

    generate_synthetic(tmp_path / "syn", 3, 1, SyntheticConfig(width=160, height=120, scale=2.0),
                       formats=("crowdhuman",), workers=0)
    root = tmp_path / "syn" / "crowdhuman"
    name = "test_crowdhuman_train_box"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_pedestrian_dataset(name, root / "annotation_train.odgt", image_root=root / "Images")
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_list(["DATASETS.TRAIN", (name,), "DATASETS.TRAIN_BOX", "visible", "INPUT.RANDOM_FLIP", "none",
                         "INPUT.MIN_SIZE_TRAIN", (120,), "INPUT.MAX_SIZE_TRAIN", 160, "SOLVER.IMS_PER_BATCH", 1,
                         "DATALOADER.NUM_WORKERS", 0])
    by_file = {r["file_name"]: r for r in DatasetCatalog.get(name)}
    (item,) = next(iter(Trainer.build_train_loader(cfg)))
    record = by_file[item["file_name"]]
    expected = sorted([x, y, x + w, y + h] for x, y, w, h in (a["vis_bbox"] for a in record["annotations"]))
    got = sorted(item["instances"].gt_boxes.tensor.tolist())
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert any(a["vis_bbox"] != a["bbox"] for r in by_file.values() for a in r["annotations"])


def _entry(image_id, boxes, sized=True):
    entry = {"ID": image_id, "gtboxes": [{"tag": "person", "fbox": b, "hbox": b, "vbox": b} for b in boxes]}
    return dict(entry, width=100, height=100) if sized else entry


def test_degenerate_box_is_a_target_nothing_matches(tmp_path):
    """One image, a person and a degenerate person (w 0), one detection on the first: the
    official code gives AP 0 (one point), MR 0.5 (miss 1/2 at every reference), JI 1/2."""
    gt = [_entry("a", [[10, 10, 20, 40], [60, 10, 0, 40]])]
    dt = [{"ID": "a", "width": 100, "height": 100, "dtboxes": [{"box": [10, 10, 20, 40], "score": 0.9, "tag": 1}]}]
    metrics = crowdhuman_metrics(images_from_odgt(gt, dt))
    assert metrics["AP"] == 0.0 and metrics["MR"] == pytest.approx(0.5)
    assert metrics["JI"] == pytest.approx(0.5, abs=1e-6)
    odgt = tmp_path / "gt.odgt"
    odgt.write_text(json.dumps(gt[0]) + "\n")
    (record,) = load_crowdhuman(odgt, tmp_path)
    assert [a["bbox"][2] for a in record["annotations"]] == [20.0, 0.0]  # kept for the evaluation


def test_images_without_boxes_detections_or_size(tmp_path, capsys):
    """Annotations without sizes (as annotation_val.odgt): an image with no box and no line in
    the dump counts in FPPI (E, M fixes); the other image's size comes from the dump."""
    gt = [_entry("a", [], sized=False), _entry("b", [[10, 10, 20, 40]], sized=False)]
    dt = [{"ID": "b", "width": 100, "height": 100, "dtboxes": [{"box": [10, 10, 20, 40], "score": 0.9, "tag": 1},
                                                               {"box": [60, 10, 20, 40], "score": 0.8, "tag": 1}]}]
    metrics = crowdhuman_metrics(images_from_odgt(gt, dt))
    # TP then FP at FPPI 1/2: every reference sees miss 0; JI's threshold 0.8 keeps the TP alone
    # in the one image with a target or a detection
    assert metrics == pytest.approx({"AP": 0.0, "MR": 0.0, "JI": 1.0}, abs=1e-5)
    (tmp_path / "gt.odgt").write_text("".join(json.dumps(e) + "\n" for e in gt))
    (tmp_path / "dt.odgt").write_text("".join(json.dumps(e) + "\n" for e in dt))
    assert crowdhuman_main([str(tmp_path / "gt.odgt"), str(tmp_path / "dt.odgt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)


def test_no_detection_and_no_target():
    """No counted detection: AP 0, MR 1 (N fix); detections and no target at all: recall 0 / 0,
    so MR NaN and, from two detections on (one point has no trapezoid), AP NaN."""
    gt = [{"ID": "a", "width": 100, "height": 100, "gtboxes": [{"tag": "mask", "fbox": [0, 0, 50, 50]}]}]
    none = crowdhuman_metrics(images_from_odgt(gt, []))
    assert none == {"AP": 0.0, "MR": 1.0, "JI": 0.0}
    dt = [{"ID": "a", "width": 100, "height": 100, "dtboxes": [{"box": [60, 60, 20, 30], "score": 0.5},
                                                               {"box": [70, 60, 20, 30], "score": 0.4}]}]
    only_fp = crowdhuman_metrics(images_from_odgt(gt, dt))
    assert np.isnan(only_fp["AP"]) and np.isnan(only_fp["MR"]) and only_fp["JI"] == 0.0


def test_cli_errors_name_the_image(tmp_path, capsys):
    gt, dump = tmp_path / "gt.odgt", tmp_path / "dt.odgt"
    gt.write_text(json.dumps(_entry("a", [[10, 10, 20, 40]], sized=False)) + "\n")
    dump.write_text(json.dumps({"ID": "z", "width": 9, "height": 9, "dtboxes": []}) + "\n")
    assert crowdhuman_main([str(gt), str(dump)]) == 2
    assert "detections of image 'z', which is not in the annotations" in capsys.readouterr().err
    dump.write_text(json.dumps({"ID": "a", "dtboxes": [{"box": [1, 2, 3, 4], "score": 0.5}]}) + "\n")
    assert crowdhuman_main([str(gt), str(dump)]) == 2
    assert "image 'a' has detections but no 'width'/'height'" in capsys.readouterr().err
    dump.write_text(json.dumps({"ID": "a", "width": 9, "height": 9, "dtboxes": [{"box": [1, 2, 3]}]}) + "\n")
    assert crowdhuman_main([str(gt), str(dump)]) == 2
    assert "image 'a': every detection needs 'box'" in capsys.readouterr().err
    assert crowdhuman_main([str(gt), str(tmp_path / "missing.odgt")]) == 2
    assert "missing.odgt not found" in capsys.readouterr().err

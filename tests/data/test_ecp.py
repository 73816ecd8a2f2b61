"""EuroCity Persons: reader, the ecp protocol on a hand-made frame (values derived from the ECP
script's params.py / match.py / statistics.py definitions), generated files end to end."""
import json
import math

import pytest

from hkd_d2.data.ecp import ecp_annotation, load_ecp, read_ecp_detections, read_ecp_frame, write_ecp_frame
from hkd_d2.data.pedestrian_json import PedestrianDataError
from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.evaluation.miss_rate import MIN_MISS_RATE, Detections, GroundTruth, evaluate_miss_rate
from hkd_d2.evaluation.miss_rate.cli import main as miss_rate_main

OBJECTS = [
    {"identity": "pedestrian", "x0": 100, "y0": 100, "x1": 140, "y1": 200, "tags": []},  # P1
    {"identity": "rider", "x0": 300, "y0": 100, "x1": 340, "y1": 200, "tags": []},  # R: tolerated (IoU)
    {"identity": "person-group-far-away", "x0": 500, "y0": 100, "x1": 700, "y1": 200, "tags": []},  # G (IoA)
    {"identity": "pedestrian", "x0": 800, "y0": 100, "x1": 814, "y1": 135, "tags": []},  # P2, h 35
    {"identity": "pedestrian", "x0": 900, "y0": 100, "x1": 940, "y1": 200, "tags": ["occluded>40"]},  # P3
    {"identity": "car", "x0": 0, "y0": 300, "x1": 200, "y1": 400, "tags": []},  # not used
]
DETS = [
    ([1000, 100, 13, 32], 0.99),  # d5: h 32 <= 40 / 1.25: skipped in reasonable (kept by the toolbox rule)
    ([305, 105, 20, 40], 0.95),  # d2: inside R, IoU 0.2: a FP (IoA 1 would ignore it)
    ([100, 100, 40, 100], 0.9),  # d1: P1
    ([510, 110, 20, 50], 0.7),  # d3: inside G: ignored (IoA 1)
    ([800, 100, 14, 35], 0.6),  # d4: P2, ignored in reasonable (h < 40), the target of small
    ([900, 100, 40, 100], 0.5),  # d6: P3
]


def _evaluate(objects, dets):
    anns = [dict(ecp_annotation(o), image_id=1) for o in objects if o["identity"] != "car"]
    gt = GroundTruth.from_annotations([1], anns, "ecp")
    dt = Detections.from_results([{"image_id": 1, "bbox": b, "score": s} for b, s in dets], gt, "ecp")
    return gt, evaluate_miss_rate(gt, dt, "ecp")


def test_hand_made_frame():
    """reasonable: positives P1; counted d2 FP (FPPI 1), d1 TP (FPPI 1): refs < 1 see recall 0,
    ref 1 recall 1 -> exp(log(1e-10) / 9). occluded: P3; d2 FP then d6 TP, the same value.
    small [30, 60]: P2; d5 FP, d2 FP, d4 TP (FPPI 2) -> recall 0 at every ref -> 1.
    all: P1, P2, P3; counted d5 FP, d2 FP, d1, d4, d6 TPs (FPPI 2) -> 1."""
    gt, mr = _evaluate(OBJECTS, DETS)
    assert list(gt.ioa) == [False, False, True, False, False]
    assert list(gt.occlusion) == [0, 0, 0, 0, 40]
    one_fp = MIN_MISS_RATE ** (1 / 9)
    assert mr["reasonable"] == pytest.approx(one_fp)
    assert mr["occluded"] == pytest.approx(one_fp)
    assert mr["small"] == pytest.approx(1.0)
    assert mr["all"] == pytest.approx(1.0)


def test_tags_ignore_and_depiction():
    sitting = dict(OBJECTS[0], tags=["sitting-lying"])
    depicted = dict(OBJECTS[2], tags=["depiction"])
    assert ecp_annotation(sitting)["ignore"] == 1 and ecp_annotation(sitting)["label"] == "pedestrian"
    assert ecp_annotation(depicted)["label"] == "person-group-far-away-depiction"
    assert ecp_annotation(dict(OBJECTS[1], tags=["depiction"]))["label"] == "rider"  # tolerated, not discarded
    assert ecp_annotation(dict(OBJECTS[0], tags=["truncated>80", "occluded>10"]))["truncation"] == 80
    # per tag: "occluded" before "truncated" (if/elif), a level only from exactly one number
    levels = {t: (a["occlusion"], a["truncation"]) for t in ("occluded>40-truncated>10", "truncated-occluded>40",
                                                             "occluded", "truncated>40")
              for a in [ecp_annotation(dict(OBJECTS[0], tags=[t]))]}
    assert levels == {"occluded>40-truncated>10": (0, 0), "truncated-occluded>40": (40, 0), "occluded": (0, 0),
                      "truncated>40": (0, 40)}
    # the depicted group is discarded: the detection inside it becomes a FP in "all"
    gt, mr = _evaluate([sitting, depicted], [([510, 110, 20, 50], 0.7)])
    assert len(gt.boxes) == 1 and bool(gt.ignore[0])


def test_reader_errors(tmp_path):
    bad = tmp_path / "labels" / "city" / "city_00001.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"identity": "frame", "objects": []}))
    with pytest.raises(PedestrianDataError, match=r"city_00001\.json: no 'children' list"):
        read_ecp_frame(bad)
    bad.write_text(json.dumps({"identity": "frame", "children": [{"identity": "pedestrian", "x0": 1}]}))
    with pytest.raises(PedestrianDataError, match=r"city_00001\.json: children\[0\] \(pedestrian\) needs numbers"):
        read_ecp_frame(bad)


def test_generated_files_end_to_end(tmp_path):
    """Generated ECP labels; detection files holding every clean pedestrian (score 1): every
    positive found at FPPI 0, so LAMR is the clamp 1e-10 in each setup with positives."""
    truth = generate_synthetic(tmp_path / "syn", 2, 6, SyntheticConfig(width=320, height=240, scale=2.0),
                               formats=("ecp",), workers=0)
    labels = tmp_path / "syn" / "ecp" / "day" / "labels" / "val"
    records = load_ecp(labels, tmp_path / "syn" / "ecp" / "day" / "img" / "val")
    assert [r["annotations"] for r in records] == [r["annotations"] for r in truth["ecp_val"]]
    results = []
    for record, path in zip(records, sorted(labels.glob("*/*.json"))):
        frame = json.loads(path.read_text())
        dets = [dict(c, score=1.0) for c in frame["children"] if c["identity"] == "pedestrian"]
        det_file = tmp_path / "dets" / path.parent.name / path.name
        write_ecp_frame(det_file, frame["imagewidth"], frame["imageheight"], dets)
        results += read_ecp_detections(det_file, record["image_id"])
    anns = [dict(a, image_id=r["image_id"]) for r in records for a in r["annotations"]]
    gt = GroundTruth.from_annotations([r["image_id"] for r in records], anns, "ecp")
    mr = evaluate_miss_rate(gt, Detections.from_results(results, gt, "ecp"), "ecp", ["reasonable", "all"])
    assert int((~gt.ignore).sum()) > 0
    assert mr == pytest.approx({"reasonable": MIN_MISS_RATE, "all": MIN_MISS_RATE})


def _frame(folder, name, objects, dets):
    """Label file labels/city/<name>.json and detection file dets/<name>.json."""
    write_ecp_frame(folder / "labels" / "city" / f"{name}.json", 1920, 1024, objects)
    write_ecp_frame(folder / "dets" / f"{name}.json", 1920, 1024, [dict(d, identity="pedestrian") for d in dets])


def _cli(folder, capsys):
    assert miss_rate_main([str(folder / "labels"), str(folder / "dets"), "--protocol", "ecp", "--json"]) == 0
    return {k: math.nan if v is None else v for k, v in json.loads(capsys.readouterr().out).items()}


def _box(x0, y0, x1, y1):
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1}


def test_depicted_rider_is_tolerated(tmp_path, capsys):
    """A detection on a depicted rider is matched to it (IoU) and left out: the pedestrian's
    detection alone is counted, a TP at FPPI 0 -> the 1e-10 clamp in every reference."""
    rider = dict(_box(100, 100, 140, 200), identity="rider", tags=["depiction"])
    pedestrian = dict(_box(300, 100, 340, 200), identity="pedestrian", tags=[])
    _frame(tmp_path, "city_00001", [rider], [dict(_box(100, 100, 140, 200), score=0.9)])
    _frame(tmp_path, "city_00002", [pedestrian], [dict(_box(300, 100, 340, 200), score=0.8)])
    assert _cli(tmp_path, capsys)["reasonable"] == pytest.approx(MIN_MISS_RATE)


def test_degenerate_pedestrian_is_a_target(tmp_path, capsys):
    """x1 < x0 with a height >= 40: a target (its box spans min..max of the corners, as the
    script's CompareRectangles reads it); the training mapper leaves it out."""
    flipped = dict(_box(340, 100, 300, 200), identity="pedestrian", tags=[])
    _frame(tmp_path, "city_00001", [flipped], [dict(_box(300, 100, 340, 200), score=0.9)])
    assert _cli(tmp_path, capsys)["reasonable"] == pytest.approx(MIN_MISS_RATE)
    (record,) = load_ecp(tmp_path / "labels", tmp_path / "img")
    (ann,) = record["annotations"]
    assert ann["corners"] == [340.0, 100.0, 300.0, 200.0] and ann["bbox"][2] == -40.0 and ann["ignore"] == 0


def test_overlap_computed_on_the_corners(tmp_path, capsys):
    """IoU exactly 1/2 with the script's arithmetic on x0..y1 (0.49999999999999994 from x + w):
    a match, the only positive found at FPPI 0."""
    _frame(tmp_path, "city_00001", [dict(_box(468.9, 644.0, 506.3, 685.5), identity="pedestrian", tags=[])],
           [dict(_box(468.9, 644.0, 506.3, 727.0), score=0.9)])
    assert _cli(tmp_path, capsys)["all"] == pytest.approx(MIN_MISS_RATE)


def test_setups_without_pedestrians(tmp_path, capsys):
    """No non-ignored pedestrian: 1.0 without counted detections (the script's empty curve),
    NaN with one (recall 0 / 0)."""
    _frame(tmp_path, "city_00001", [dict(_box(100, 100, 140, 200), identity="rider", tags=[])], [])
    assert _cli(tmp_path, capsys) == {"reasonable": 1.0, "small": 1.0, "occluded": 1.0, "all": 1.0}
    _frame(tmp_path, "city_00001", [], [dict(_box(500, 100, 540, 200), score=0.5)])
    assert math.isnan(_cli(tmp_path, capsys)["reasonable"])


def test_detection_file_layouts_and_folder_errors(tmp_path, capsys):
    """Detection files as the script's loader reads them: ``objects``, ``confidencevalues``, rows /
    columns (x1 = maxcol + 1); one file per labelled frame."""
    det = tmp_path / "dets" / "city_00001.json"
    det.parent.mkdir(parents=True)
    det.write_text(json.dumps({"objects": [
        {"identity": "pedestrian", "mincol": 10, "minrow": 20, "maxcol": 49, "maxrow": 119, "confidencevalues": [0.7]},
        {"identity": "rider", "x0": 1, "y0": 1, "x1": 2, "y1": 2, "score": 0.1}]}))
    (result,) = read_ecp_detections(det, 1)
    assert result["corners"] == [10.0, 20.0, 50.0, 120.0] and result["score"] == 0.7
    write_ecp_frame(tmp_path / "labels" / "city" / "city_00002.json", 1920, 1024, [])
    assert miss_rate_main([str(tmp_path / "labels"), str(tmp_path / "dets"), "--protocol", "ecp"]) == 2
    assert "missing ['city_00002'], not in the ground truth ['city_00001']" in capsys.readouterr().err
    assert miss_rate_main([str(tmp_path / "labels"), str(tmp_path / "dets")]) == 2
    assert "folders are read only with the protocols ['ecp']" in capsys.readouterr().err


def test_training_mapper_leaves_degenerate_boxes_out(tmp_path):
    """Records keep a box with x1 < x0 for the evaluation; the transforms would make it a valid
    box, so the training mapper drops it."""
    from detectron2.config import get_cfg
    from PIL import Image

    from hkd_d2.config import add_hkd_config
    from hkd_d2.data import PedestrianDatasetMapper

    objects = [dict(_box(10, 10, 30, 60), identity="pedestrian", tags=[]),
               dict(_box(80, 10, 60, 60), identity="pedestrian", tags=[])]
    write_ecp_frame(tmp_path / "labels" / "city" / "city_00001.json", 96, 64, objects)
    (tmp_path / "img" / "city").mkdir(parents=True)
    Image.new("RGB", (96, 64)).save(tmp_path / "img" / "city" / "city_00001.png")
    (record,) = load_ecp(tmp_path / "labels", tmp_path / "img")
    assert len(record["annotations"]) == 2
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96, "INPUT.RANDOM_FLIP", "none"])
    instances = PedestrianDatasetMapper(cfg, True)(record)["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[10.0, 10.0, 30.0, 60.0]]

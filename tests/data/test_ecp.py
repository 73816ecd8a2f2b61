"""EuroCity Persons: reader, the ecp protocol on a hand-made frame (values derived from the ECP
script's params.py / match.py / statistics.py definitions), generated files end to end."""
import json

import pytest

from hkd_d2.data.ecp import ecp_annotation, load_ecp, read_ecp_detections, read_ecp_frame, write_ecp_frame
from hkd_d2.data.pedestrian_json import PedestrianDataError
from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.evaluation.miss_rate import MIN_MISS_RATE, Detections, GroundTruth, evaluate_miss_rate

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
    assert ecp_annotation(dict(OBJECTS[0], tags=["truncated>80", "occluded>10"]))["truncation"] == 80
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

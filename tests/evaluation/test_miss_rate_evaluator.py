"""MissRateEvaluator on a tiny registered dataset, and its registry/builder."""
import json

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Boxes, Instances

from hkd_d2.config import add_hkd_config
from hkd_d2.evaluation import EVALUATOR_REGISTRY, MissRateEvaluator, build_evaluator
from hkd_d2.evaluation.evaluator import DETECTIONS_FILE, PLOT_FILE
from hkd_d2.evaluation.miss_rate import MIN_MISS_RATE

DATASET = "test_miss_rate_tiny"
PERSONS = {1: [10.0, 10.0, 20.0, 100.0], 2: [50.0, 20.0, 30.0, 60.0]}  # image_id -> xywh


def _records():
    records = []
    for image_id in (1, 2, 3):
        anns = []
        if image_id in PERSONS:
            box = PERSONS[image_id]
            anns.append({"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "vis_bbox": box,
                         "vis_ratio": 1.0, "ignore": 0, "label": "pedestrian"})
        if image_id == 3:
            anns.append({"bbox": [0.0, 0.0, 60.0, 80.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                         "vis_bbox": [0.0, 0.0, 60.0, 80.0], "vis_ratio": 1.0, "ignore": 1,
                         "label": "ignore region"})
        records.append({"file_name": f"/nonexistent/{image_id}.png", "image_id": image_id, "height": 128,
                        "width": 128, "annotations": anns})
    return records


@pytest.fixture(scope="module")
def dataset():
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, _records)
        MetadataCatalog.get(DATASET).set(thing_classes=["person"], evaluator_type="miss_rate",
                                         protocol="citypersons")
    return DATASET


def _output(boxes_xyxy, scores):
    inst = Instances((128, 128))
    inst.pred_boxes = Boxes(torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return {"instances": inst}


def _xyxy(xywh):
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def test_evaluator_values_and_files(dataset, tmp_path):
    evaluator = MissRateEvaluator(dataset, str(tmp_path), setups=["Reasonable", "All"])
    evaluator.reset()
    # Image 1: the 100 px person found; image 2: the 60 px person missed, one false positive
    # (score 0.95, ranked first); image 3: a detection inside the ignore region (leaves the curve).
    evaluator.process([{"image_id": 1}, {"image_id": 2}],
                      [_output([_xyxy(PERSONS[1])], [0.9]), _output([[90, 70, 110, 120]], [0.95])])
    evaluator.process([{"image_id": 3}], [_output([[10, 10, 30, 60]], [0.99])])
    results = evaluator.evaluate()

    # Both persons count in both setups (60 and 100 px, fully visible); 3 images.
    # Sorted: ignored 0.99 (dropped), FP 0.95 (fppi 1/3), TP 0.9 (recall 1/2).
    # FPPI refs below 1/3 see no detection -> miss 1; refs >= 1/3 (0.5623, 1) -> miss 0.5.
    expected = 100 * 0.5 ** (2 / 9)
    assert set(results) == {"MR"}
    assert results["MR"]["Reasonable"] == pytest.approx(expected)
    assert results["MR"]["All"] == pytest.approx(expected)

    written = json.loads((tmp_path / DETECTIONS_FILE).read_text())
    assert len(written) == 3
    by_score = {round(d["score"], 2): d for d in written}
    assert by_score[0.9]["image_id"] == 1 and by_score[0.9]["category_id"] == 1
    assert by_score[0.9]["bbox"] == pytest.approx(PERSONS[1])
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluator_perfect_and_empty(dataset, tmp_path):
    evaluator = MissRateEvaluator(dataset, None, plot=False)
    evaluator.process([{"image_id": i} for i in PERSONS], [_output([_xyxy(b)], [0.8]) for b in PERSONS.values()])
    assert evaluator.evaluate()["MR"]["Reasonable"] == pytest.approx(100 * MIN_MISS_RATE)
    evaluator.reset()
    assert evaluator.evaluate()["MR"]["Reasonable"] == pytest.approx(100.0)


def test_build_evaluator_from_metadata(dataset, tmp_path):
    assert "miss_rate" in EVALUATOR_REGISTRY
    cfg = add_hkd_config(get_cfg())
    cfg.TEST.MISS_RATE.SETUPS = ["Reasonable"]
    cfg.TEST.MISS_RATE.PLOT = False
    evaluator = build_evaluator(cfg, dataset, str(tmp_path))
    assert isinstance(evaluator, MissRateEvaluator)
    evaluator.process([{"image_id": 1}], [_output([_xyxy(PERSONS[1])], [0.9])])
    assert list(evaluator.evaluate()["MR"]) == ["Reasonable"]
    assert not (tmp_path / PLOT_FILE).exists()


def test_bad_metadata(dataset):
    with pytest.raises(ValueError, match="Unknown setups"):
        MissRateEvaluator(dataset, setups=["Nope"])
    name = "test_miss_rate_no_protocol"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, _records)
    with pytest.raises(ValueError, match="no 'protocol'"):
        MissRateEvaluator(name)
    with pytest.raises(ValueError, match="no 'evaluator_type'"):
        build_evaluator(add_hkd_config(get_cfg()), name)


MULTICLASS = "test_miss_rate_two_classes"


def _two_class_records():
    """Image 1: a pedestrian (class 0, 100 px); image 2: a rider (class 1, 60 px); image 3: nothing."""
    records = _records()
    records[1]["annotations"][0] = dict(records[1]["annotations"][0], category_id=1, label="rider")
    records[2]["annotations"] = []
    return records


def _classed(boxes_xyxy, scores, classes):
    out = _output(boxes_xyxy, scores)
    out["instances"].pred_classes = torch.tensor(classes, dtype=torch.int64)
    return out


def test_several_classes_are_scored_class_by_class(tmp_path):
    if MULTICLASS not in DatasetCatalog.list():
        DatasetCatalog.register(MULTICLASS, _two_class_records)
        MetadataCatalog.get(MULTICLASS).set(thing_classes=["pedestrian", "rider"], evaluator_type="miss_rate",
                                            protocol="citypersons")
    evaluator = MissRateEvaluator(MULTICLASS, str(tmp_path), setups=["Reasonable"], plot=False)
    evaluator.reset()
    # Pedestrian detections: the pedestrian (0.9) and one on the rider (0.8: an ignore region when
    # scoring pedestrians); a pedestrian false positive in image 3 (0.99). Rider detection: the rider (0.7).
    evaluator.process(
        [{"image_id": 1}, {"image_id": 2}, {"image_id": 3}],
        [_classed([_xyxy(PERSONS[1])], [0.9], [0]),
         _classed([_xyxy(PERSONS[2]), _xyxy(PERSONS[2])], [0.8, 0.7], [0, 1]),
         _classed([[90, 10, 110, 60]], [0.99], [0])],
    )
    results = evaluator.evaluate()
    assert list(results) == ["MR", "MR_pedestrian", "MR_rider"]
    # Pedestrians: FP first (fppi 1/3), then the TP (recall 1): miss 1 at the 7 refs below 1/3, ~0 above.
    assert results["MR_pedestrian"]["Reasonable"] == pytest.approx(100 * MIN_MISS_RATE ** (2 / 9))
    assert results["MR_rider"]["Reasonable"] == pytest.approx(100 * MIN_MISS_RATE)
    assert results["MR"] == results["MR_pedestrian"]
    written = json.loads((tmp_path / DETECTIONS_FILE).read_text())
    assert sorted(d["category_id"] for d in written) == [1, 1, 1, 2]

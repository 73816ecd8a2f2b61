"""Miss-rate protocol core: official reference numbers, protocol semantics, bug fixes, CLI."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hkd_d2.evaluation.miss_rate import (
    MIN_MISS_RATE,
    PROTOCOLS,
    Detections,
    GroundTruth,
    MissRateInputError,
    evaluate_miss_rate,
    evaluate_setup,
    load_detections,
    load_ground_truth,
)
from hkd_d2.evaluation.miss_rate.cli import main

CITYPERSONS_EXPECTED = {
    "Reasonable": 0.288963,
    "Reasonable_small": 0.284629,
    "Reasonable_occ=heavy": 0.293483,
    "All": 0.42396,
}
REFS = np.array(PROTOCOLS["citypersons"].fppi_refs)


def _gt(boxes_per_image, protocol="citypersons", **fields):
    """GroundTruth of images 1..I; boxes_per_image[i] is a list of (bbox, extra-fields) or bbox."""
    anns = []
    for i, boxes in enumerate(boxes_per_image, start=1):
        for b in boxes:
            bbox, extra = (b, {}) if not isinstance(b, tuple) else b
            anns.append(dict({"image_id": i, "bbox": bbox, "ignore": 0, "vis_ratio": 1.0}, **fields, **extra))
    return GroundTruth.from_annotations(list(range(1, len(boxes_per_image) + 1)), anns, protocol)


def _dt(gt, dets, protocol="citypersons"):
    """dets: list of (image_id, bbox, score)."""
    return Detections.from_results(
        [{"image_id": i, "bbox": b, "score": s, "category_id": 1} for i, b, s in dets], gt, protocol
    )


def _mr(gt, dt, setup="Reasonable", protocol="citypersons"):
    return evaluate_setup(gt, dt, protocol, setup).log_average


def _expected_mr(miss_at_refs):
    return float(np.exp(np.mean(np.log(np.maximum(MIN_MISS_RATE, miss_at_refs)))))


PED = [10, 10, 20, 100]  # a fully visible 100 px pedestrian


# ---------------------------------------------------------------- official reference numbers


def test_citypersons_reference(reference_dir):
    root = reference_dir / "citypersons"
    gt = load_ground_truth(root / "val_gt.json", "citypersons")
    dt = load_detections(root / "dt_synthetic_seed1.json", gt, "citypersons")
    result = evaluate_miss_rate(gt, dt, "citypersons")
    assert list(result) == list(CITYPERSONS_EXPECTED)
    for setup, expected in CITYPERSONS_EXPECTED.items():
        assert result[setup] == pytest.approx(expected, abs=1e-6), setup


def test_caltech_reference(reference_dir):
    root = reference_dir / "caltech"
    gt = load_ground_truth(root / "gt-Reasonable.mat", "caltech")
    dt = load_detections(root / "dt-ACF-Caltech.mat", gt, "caltech")
    assert gt.num_images == 4024 and int((~gt.ignore).sum()) == 1014
    result = evaluate_miss_rate(gt, dt, "caltech", ["Reasonable"])
    assert result["Reasonable"] == pytest.approx(0.442191, abs=1e-6)


def test_cli_json_reference(reference_dir, capsys):
    root = reference_dir / "citypersons"
    assert main([str(root / "val_gt.json"), str(root / "dt_synthetic_seed1.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == pytest.approx(CITYPERSONS_EXPECTED, abs=1e-6)


def test_cli_caltech_table_and_plot(reference_dir, tmp_path, capsys):
    root = reference_dir / "caltech"
    png = tmp_path / "curves.png"
    argv = [str(root / "gt-Reasonable.mat"), str(root / "dt-ACF-Caltech.mat"), "--protocol", "caltech"]
    assert main(argv + ["--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Reasonable" in out and "44.22" in out and "0.442191" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- protocol semantics


def test_perfect_detection_hits_the_clamp():
    """Miss rate 0 at every reference point: log(max(1e-10, 0)) as dbEval.m, not log(0)."""
    gt = _gt([[PED]])
    assert _mr(gt, _dt(gt, [(1, PED, 0.9)])) == pytest.approx(MIN_MISS_RATE)


def test_empty_detections_give_one():
    gt = _gt([[PED], []])
    dt = Detections.from_results([], gt, "citypersons")
    assert evaluate_miss_rate(gt, dt, "citypersons", ["Reasonable", "All"]) == {"Reasonable": 1.0, "All": 1.0}


def test_top_false_positives_give_recall_zero():
    """10 images, the best detection is a false positive (FPPI 0.1 > 0.01): recall 0 below 0.1.

    The official script reads recall[-1] (the curve's end, 0.8) there and would give MR 0.2.
    """
    gt = _gt([[PED] for _ in range(10)])
    dets = [(1, [300, 300, 20, 100], 0.99)] + [(i, PED, 0.5) for i in range(1, 9)]
    curve = evaluate_setup(gt, _dt(gt, dets), "citypersons", "Reasonable")
    expected = np.where(REFS < 0.1, 1.0, 0.2)
    np.testing.assert_allclose(curve.miss_at_refs, expected)
    assert curve.log_average == pytest.approx(0.2 ** (5 / 9))


def test_ground_truth_id_zero_counts_as_matched():
    gt = _gt([[(PED, {"id": 0}), ([100, 10, 20, 100], {"id": 1})]])
    assert _mr(gt, _dt(gt, [(1, PED, 0.9)])) == pytest.approx(0.5)


def test_out_of_range_ground_truth_becomes_ignore_not_removed():
    """A 45 px person is ignored in Reasonable: a detection on it (45 >= 50/1.25) is no FP."""
    gt = _gt([[PED, [200, 10, 9, 45]]])
    dt = _dt(gt, [(1, [200, 10, 9, 45], 0.95), (1, PED, 0.9)])
    assert _mr(gt, dt) == pytest.approx(MIN_MISS_RATE)
    # Under "All" (height >= 20) the small person counts: both found.
    assert _mr(gt, dt, "All") == pytest.approx(MIN_MISS_RATE)


def test_ignore_region_overlap_is_intersection_over_detection_area():
    region = ([0, 0, 400, 300], {"ignore": 1})
    gt = _gt([[PED, region]])
    # IoU with the region is tiny, IoA is 1: the detection leaves the curve.
    dt = _dt(gt, [(1, [200, 100, 20, 100], 0.95), (1, PED, 0.9)])
    assert _mr(gt, dt) == pytest.approx(MIN_MISS_RATE)
    # Same detections without the region: the top one is a false positive at FPPI 1.
    gt_plain = _gt([[PED]])
    dt_plain = _dt(gt_plain, [(1, [200, 100, 20, 100], 0.95), (1, PED, 0.9)])
    curve = evaluate_setup(gt_plain, dt_plain, "citypersons", "Reasonable")
    np.testing.assert_allclose(curve.miss_at_refs, np.where(REFS < 1, 1.0, MIN_MISS_RATE).clip(0, 1) * (REFS < 1))
    assert curve.log_average == pytest.approx(_expected_mr(np.where(REFS < 1, 1.0, 0.0)))


def test_non_ignored_ground_truth_preferred_over_ignore():
    """A detection overlapping both a person and an ignore region matches the person."""
    gt = _gt([[PED, ([0, 0, 400, 300], {"ignore": 1})]])
    assert _mr(gt, _dt(gt, [(1, PED, 0.9)])) == pytest.approx(MIN_MISS_RATE)


def test_each_ground_truth_matched_once():
    """Two detections on one person: the second (lower score) is a false positive."""
    gt = _gt([[PED]] + [[] for _ in range(9)])
    curve = evaluate_setup(gt, _dt(gt, [(1, PED, 0.9), (1, PED, 0.8)]), "citypersons", "Reasonable")
    np.testing.assert_allclose(curve.fppi, [0.0, 0.1])
    np.testing.assert_allclose(curve.miss_rate, [0.0, 0.0])


@pytest.mark.parametrize("height, kept", [(40.0, True), (39.99, False)])
def test_detection_height_filter(height, kept):
    """Detections shorter than 50 / 1.25 = 40 px are dropped in Reasonable."""
    gt = _gt([[[10, 10, 20, 50]]])
    width = 0.4 * height
    dt = _dt(gt, [(1, [10 + (20 - width) / 2, 10 + (50 - height) / 2, width, height], 0.9)])
    assert _mr(gt, dt) == pytest.approx(MIN_MISS_RATE if kept else 1.0)


def test_setup_height_ranges_are_inclusive():
    """Reasonable_small is [50, 75]: a 75 px person counts, a 76 px one is ignored."""
    gt = _gt([[[10, 10, 30, 75], [100, 10, 30, 76]]])
    dt = _dt(gt, [(1, [100, 10, 30, 76], 0.9)])  # only the 76 px person is found
    assert _mr(gt, dt, "Reasonable_small") == pytest.approx(1.0)
    dt = _dt(gt, [(1, [10, 10, 30, 75], 0.9)])
    assert _mr(gt, dt, "Reasonable_small") == pytest.approx(MIN_MISS_RATE)


def test_visibility_ranges():
    occluded = ([10, 10, 20, 100], {"vis_ratio": 0.5})
    gt = _gt([[occluded]])
    dt = _dt(gt, [(1, PED, 0.9)])
    assert _mr(gt, dt, "Reasonable_occ=heavy") == pytest.approx(MIN_MISS_RATE)
    assert math.isnan(_mr(gt, dt, "Reasonable"))  # no positives at vis >= 0.65


def test_equal_scores_keep_image_order():
    """Ties across images are broken by image order (stable sort, as both official tools)."""
    fp_first = _gt([[], [PED]] + [[] for _ in range(48)])
    dt = _dt(fp_first, [(1, [300, 300, 20, 100], 0.9), (2, PED, 0.9)])
    assert _mr(fp_first, dt) == pytest.approx(_expected_mr(np.where(REFS < 0.02, 1.0, 0.0)))
    tp_first = _gt([[PED], []] + [[] for _ in range(48)])
    dt = _dt(tp_first, [(2, [300, 300, 20, 100], 0.9), (1, PED, 0.9)])
    assert _mr(tp_first, dt) == pytest.approx(MIN_MISS_RATE)


def test_max_detections_per_image():
    gt = _gt([[PED]])
    dets = [(1, [300 + i, 300, 20, 100], 0.9) for i in range(1000)] + [(1, PED, 0.1)]
    citypersons = evaluate_setup(gt, _dt(gt, dets), "citypersons", "Reasonable")
    assert len(citypersons.fppi) == 1000 and citypersons.miss_rate[-1] == 1.0
    gt_c = _gt([[(PED, {"label": "person"})]], protocol="caltech")
    caltech = evaluate_setup(gt_c, _dt(gt_c, dets, "caltech"), "caltech", "Reasonable")
    assert len(caltech.fppi) == 1001 and caltech.miss_rate[-1] == 0.0


def test_caltech_labels_border_and_standardisation():
    person = ([100, 100, 40, 100], {"label": "person"})
    gt = _gt([[person]], protocol="caltech")
    # 100 px wide detection with the person's centre: IoU 0.4 raw, 1.0 once both are 0.41*h wide.
    wide = [70, 100, 100, 100]
    assert _mr(gt, _dt(gt, [(1, wide, 0.9)], "caltech"), protocol="caltech") == 0.0  # dbEval.m: no clamp
    gt_cp = _gt([[[100, 100, 40, 100]]])
    assert _mr(gt_cp, _dt(gt_cp, [(1, wide, 0.9)])) == pytest.approx(1.0)

    fa = ([300, 100, 40, 100], {"label": "person-fa"})
    people = ([400, 100, 80, 100], {"label": "people"})
    border = ([2, 100, 40, 100], {"label": "person"})
    gt = _gt([[person, fa, people, border]], protocol="caltech")
    assert int((~gt.ignore).sum()) == 2 and len(gt.boxes) == 3  # person-fa removed, people ignore
    # Detections on "people" and on the border person are ignored; the one on "person-fa" is a FP.
    dets = [(1, [400, 100, 80, 100], 0.95), (1, [2, 100, 40, 100], 0.94), (1, person[0], 0.9)]
    assert _mr(gt, _dt(gt, dets, "caltech"), protocol="caltech") == 0.0
    dets.append((1, fa[0], 0.99))
    curve = evaluate_setup(gt, _dt(gt, dets, "caltech"), "caltech", "Reasonable")
    np.testing.assert_allclose(curve.fppi, [1.0, 1.0])


def test_caltech_unoccluded_visibility_is_inf():
    gt = _gt([[([10, 10, 20, 100], {"label": "person", "vis_ratio": 1.0}),
               ([100, 10, 20, 100], {"label": "person", "vis_ratio": 0.8})]], protocol="caltech")
    dt = _dt(gt, [(1, [10, 10, 20, 100], 0.9)], "caltech")
    assert _mr(gt, dt, "Occ=none", "caltech") == 0.0
    assert _mr(gt, dt, "Occ=partial", "caltech") == pytest.approx(1.0)


def test_unknown_setup_and_protocol():
    gt = _gt([[PED]])
    with pytest.raises(KeyError, match="Unknown setup"):
        evaluate_miss_rate(gt, _dt(gt, []), "citypersons", ["Nope"])
    with pytest.raises(KeyError, match="Unknown miss-rate protocol"):
        evaluate_miss_rate(gt, _dt(gt, []), "kitti")


# ---------------------------------------------------------------- bad input


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


GT_JSON = {
    "images": [{"id": 1}, {"id": 2}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": PED, "ignore": 0,
                     "height": 100, "vis_ratio": 1.0}],
}


def test_malformed_json_names_the_file(tmp_path):
    bad = _write(tmp_path / "gt.json", "{not json")
    with pytest.raises(MissRateInputError, match="gt.json.*malformed JSON"):
        load_ground_truth(bad)


def test_unknown_image_id_named(tmp_path):
    gt = load_ground_truth(_write(tmp_path / "gt.json", GT_JSON))
    dt_path = _write(tmp_path / "dt.json", [{"image_id": 7, "category_id": 1, "bbox": PED, "score": 0.5}])
    with pytest.raises(MissRateInputError, match="dt.json.*image id 7"):
        load_detections(dt_path, gt)


def test_nan_box_named(tmp_path):
    gt = load_ground_truth(_write(tmp_path / "gt.json", GT_JSON))
    dt_path = _write(tmp_path / "dt.json", [{"image_id": 2, "category_id": 1, "bbox": [1, 2, float("nan"), 4],
                                             "score": 0.5}])
    with pytest.raises(MissRateInputError, match="dt.json.*image id 2"):
        load_detections(dt_path, gt)
    bad_gt = dict(GT_JSON, annotations=[dict(GT_JSON["annotations"][0], bbox=[1, float("nan"), 3, 4])])
    with pytest.raises(MissRateInputError, match="gt2.json: image id 1"):
        load_ground_truth(_write(tmp_path / "gt2.json", bad_gt))


def test_cli_reports_bad_input(tmp_path, capsys):
    gt = _write(tmp_path / "gt.json", GT_JSON)
    dt = _write(tmp_path / "dt.json", [{"image_id": 9, "bbox": PED, "score": 0.5}])
    assert main([str(gt), str(dt), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "image id 9" in captured.err


def test_cli_empty_detections(tmp_path, capsys):
    gt = _write(tmp_path / "gt.json", GT_JSON)
    dt = _write(tmp_path / "dt.json", [])
    assert main([str(gt), str(dt), "--json", "--setups", "Reasonable", "All"]) == 0
    assert json.loads(capsys.readouterr().out) == {"Reasonable": 1.0, "All": 1.0}


@pytest.mark.parametrize("content,message", [
    ("[1, 2, 3]", "detection #0 is not an object"),
    ("null", "expected a COCO results list"),
    (json.dumps([{"image_id": 1, "bbox": [1, 2, 3, 4, 5], "score": 0.5}] * 4), "bad bbox"),
    (json.dumps([{"image_id": 1, "bbox": [1, 2, 3], "score": 0.5}] * 4), "bad bbox"),
])
def test_cli_malformed_detections_exit_2(tmp_path, capsys, content, message):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "bbox": PED}]}))
    dt = tmp_path / "dt.json"
    dt.write_text(content)
    assert main([str(gt), str(dt)]) == 2
    err = capsys.readouterr().err
    assert "dt.json" in err and message in err


def test_cli_binary_file_directory_and_duplicate_image_exit_2(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1}, {"id": 1}], "annotations": []}))
    binary = tmp_path / "dt.json"
    binary.write_bytes(bytes(range(256)))
    assert main([str(gt), str(binary)]) == 2
    assert "image id 1 is listed twice" in capsys.readouterr().err
    gt.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    assert main([str(gt), str(binary)]) == 2
    assert "dt.json: not a text file" in capsys.readouterr().err
    assert main([str(gt), str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err

"""The caltech protocol against dbEval.m, on one-frame cases whose MR is derived by hand.

Sources: Caltech's ``dbEval.m`` (loadGt: labels {person, person?, people, ignore}, the last
three as ignore; filterGtFun: ``h >= hr(1) & h < hr(2)``, ``vf = inf`` when ``all(bbv == 0)``
else ``bbv(3)*bbv(4) / (bb(3)*bb(4))``, ``vf >= vr(1) & vf <= vr(2)``; plotExps:
``score = exp(mean(log(score)))`` with no clamp) and the toolbox's ``bbGt.m`` (compRoc: no
counted detection -> ``ref = ref*0``, so MR 1; evalRes: ignore matches leave the curve).
Ground truth goes through the Caltech reader (:func:`caltech_annotation`) as in training.
"""
import math
from dataclasses import replace

import pytest

from hkd_d2.data.caltech import VbbObject, caltech_annotation
from hkd_d2.evaluation.miss_rate import MIN_MISS_RATE, PROTOCOLS, Detections, GroundTruth, evaluate_setup

# CityPersons rules on records of any category (the clamp convention, the NaN empty setup)
CLAMPED = replace(PROTOCOLS["citypersons"], category_id=None)
PERSON = (100.0, 100.0, 41.0, 100.0)  # already 0.41 * h wide: standardisation is a no-op


def _mr(objects_per_image, dets, setup="Reasonable", protocol="caltech"):
    """objects_per_image: list (per image) of VbbObject; dets: (image_id, bbox, score)."""
    anns = [dict(caltech_annotation(o), image_id=i)
            for i, objs in enumerate(objects_per_image, start=1) for o in objs]
    gt = GroundTruth.from_annotations(list(range(1, len(objects_per_image) + 1)), anns, protocol)
    dt = Detections.from_results([{"image_id": i, "bbox": list(b), "score": s} for i, b, s in dets], gt, protocol)
    return evaluate_setup(gt, dt, protocol, setup).log_average


@pytest.mark.parametrize("label", ["person?", "ignore", "people"])
def test_l_ignore_labels_are_kept_as_ignore_regions(label):
    """A detection on a `person?` / `ignore` box matches it (IoA 1) and leaves the curve: the
    only counted detection is the TP, recall 1 at every reference point, MR exp(log 0) = 0.
    Dropping the box instead would make the 0.95 detection a FP at FPPI 1: MR 1e-10 ** (1/9)."""
    other = (300.0, 100.0, 41.0, 100.0)
    objs = [[VbbObject("person", PERSON), VbbObject(label, other)]]
    assert _mr(objs, [(1, other, 0.95), (1, PERSON, 0.9)]) == 0.0


def test_l_person_fa_is_removed():
    """`person-fa` is not among loadGt's labels: a detection on it is a FP (FPPI 1 >= every
    reference below 1 -> miss 1 there; at FPPI 1 recall 1 -> miss 0): MR exp((8 log 1 + log 0)/9) = 0."""
    other = (300.0, 100.0, 41.0, 100.0)
    objs = [[VbbObject("person", PERSON), VbbObject("person-fa", other)]]
    assert _mr(objs, [(1, other, 0.95), (1, PERSON, 0.9)]) == 0.0
    # two images: the FP is at FPPI 0.5, so the references 0.5623 and 1 see recall 1, the others 0
    objs2 = objs + [[VbbObject("person", PERSON)]]
    dets = [(1, other, 0.95), (1, PERSON, 0.9), (2, PERSON, 0.9)]
    assert _mr(objs2, dets) == 0.0
    assert _mr(objs2, dets[:2]) == pytest.approx(0.5 ** (2 / 9))  # miss 1 x7, 0.5 x2


def test_v_visible_box_equal_to_full_box_has_visibility_one():
    """posv == pos: filterGtFun gives vf = 1 (bbGt's bbLoad would give 0). Reasonable [.65 inf]:
    a positive, found -> MR 0; Occ=none [inf inf]: ignore, the detection leaves the curve,
    no positives and no counted detection -> compRoc's zeros -> MR 1."""
    objs = [[VbbObject("person", PERSON, posv=PERSON, occl=1)]]
    dets = [(1, PERSON, 0.9)]
    assert _mr(objs, dets, "Reasonable") == 0.0
    assert _mr(objs, dets, "Occ=partial") == 0.0  # [.65 1] includes 1
    assert _mr(objs, dets, "Occ=none") == 1.0
    # not occluded (posv all zero): vf = inf, in Occ=none, not in Occ=partial
    clear = [[VbbObject("person", PERSON)]]
    assert _mr(clear, dets, "Occ=none") == 0.0
    assert _mr(clear, dets, "Occ=partial") == 1.0


@pytest.mark.parametrize("height,setup,expected", [
    (80.0, "Scale=medium", 1.0),  # [30 80): h = 80 is ignore, its detection is ignored -> 1
    (80.0, "Scale=near", 0.0),  # [80 inf): a positive, found
    (30.0, "Scale=far", 1.0),  # [20 30): h = 30 is ignore
    (30.0, "Scale=medium", 0.0),
])
def test_h_height_ranges_exclude_the_top(height, setup, expected):
    box = (100.0, 100.0, 0.41 * height, height)
    assert _mr([[VbbObject("person", box)]], [(1, box, 0.9)], setup) == expected


def test_clamp_is_not_applied():
    """10 images, one person each; a FP (score .99) then all 10 found: FPPI 0.1 from the first
    detection, so the 4 references below 0.1 see recall 0 and the 5 others recall 1. dbEval.m:
    exp(mean(log([1 1 1 1 0 0 0 0 0]))) = 0; with acfTest.m's clamp it would be 1e-10 ** (5/9)."""
    objs = [[VbbObject("person", PERSON)] for _ in range(10)]
    dets = [(1, (400.0, 100.0, 41.0, 100.0), 0.99)] + [(i, PERSON, 0.5) for i in range(1, 11)]
    assert _mr(objs, dets) == 0.0
    assert _mr(objs, dets, protocol=CLAMPED) == pytest.approx(MIN_MISS_RATE ** (5 / 9))
    # half found, no FP: miss 0.5 everywhere, the same with or without the clamp
    two = [[VbbObject("person", PERSON), VbbObject("person", (300.0, 100.0, 41.0, 100.0))]]
    assert _mr(two, [(1, PERSON, 0.9)]) == pytest.approx(0.5)


def test_empty_setup_is_one_for_caltech_nan_for_citypersons():
    assert _mr([[]], []) == 1.0
    assert math.isnan(_mr([[]], [], protocol=CLAMPED))
    # positives missing entirely but a detection counted: 0/0 recall -> NaN in compRoc too
    assert math.isnan(_mr([[]], [(1, PERSON, 0.9)]))

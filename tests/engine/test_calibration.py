"""Loss calibration (the balance rule, AUTO_BALANCE) and the distillation pre-flight check (doctor)."""
import json
from types import SimpleNamespace

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hkd_d2.data import SyntheticConfig, generate_synthetic, register_pedestrian_dataset
from hkd_d2.engine.calibration import (AUTO_BALANCE_FILE, LossBalanceHook, apply_weights, balanced_weights,
                                       measure_losses)
from hkd_d2.modeling.compatibility import teacher_student_mismatches
from hkd_d2.modeling.teacher import load_teacher_config
from hkd_d2.tools import doctor

from ..hkd_helpers import batch, build_hkd, hkd_cfg, write_teacher

TERMS = ("PyramidDistill", "RegionDistill", "LogitDistill")


def _measure(model, batches, seed=0):
    torch.manual_seed(seed)  # the ROI heads sample RoIs at random: same seed, same RoIs
    return measure_losses(model, batches)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calib")
    cfg = hkd_cfg(write_teacher(tmp))
    return cfg, build_hkd(cfg), [batch(0), batch(1)]


def test_measurement_equals_the_terms_raw_values(tiny):
    cfg, model, batches = tiny
    m = _measure(model, batches)
    assert set(m.raw) == set(TERMS) and m.batches == 2
    torch.manual_seed(0)
    stats, det = [], []
    with torch.no_grad():
        with EventStorage():
            for b in batches:
                losses = model(b)
                det.append(sum(v for k, v in losses.items() if k not in ("loss_pd", "loss_rd", "loss_ld")).item())
                stats.append({k: float(v) for k, v in model.last_losses.stats.items()})
    assert m.detection == pytest.approx(sum(det) / 2, rel=1e-6)
    for name, stat in zip(TERMS, ("distill/pd", "distill/rd", "distill/ld")):
        assert m.raw[name] == pytest.approx(sum(s[stat] for s in stats) / 2, rel=1e-5)
    assert m.weights["PyramidDistill"] == cfg.MODEL.DISTILL.PYRAMID.WEIGHT
    assert m.weight_keys["RegionDistill"] == "MODEL.DISTILL.REGION.WEIGHT"


def test_balanced_weights_bring_each_term_to_the_target(tiny):
    cfg, model, batches = tiny
    before = {t.WEIGHT_KEY: t.weight for t in model.distill_terms}
    try:
        m = _measure(model, batches)
        weights = balanced_weights(m, 0.3)
        for name in TERMS:
            assert weights[name] == pytest.approx(0.3 * m.detection / m.raw[name])
        new_cfg = apply_weights(model, cfg, weights)
        assert new_cfg.MODEL.DISTILL.LOGIT.WEIGHT == pytest.approx(weights["LogitDistill"])
        assert cfg.MODEL.DISTILL.LOGIT.WEIGHT == before["MODEL.DISTILL.LOGIT.WEIGHT"]  # input left alone
        again = _measure(model, batches)
        for name in TERMS:
            assert again.ratio(name) == pytest.approx(0.3, rel=1e-5)
        with pytest.raises(ValueError, match="> 0"):
            balanced_weights(m, 0.0)
    finally:
        for t in model.distill_terms:
            t.weight = before[t.WEIGHT_KEY]


def _fake_trainer(model, cfg, batches, start_iter=0):
    return SimpleNamespace(model=model, cfg=cfg, start_iter=start_iter,
                           build_train_loader=lambda _cfg: iter(batches * 10))


def test_auto_balance_hook_sets_records_and_resumes(tiny, tmp_path):
    cfg, model, batches = tiny
    before = {t.WEIGHT_KEY: t.weight for t in model.distill_terms}
    run_cfg = cfg.clone()
    run_cfg.merge_from_list(["MODEL.DISTILL.AUTO_BALANCE.ENABLED", True, "MODEL.DISTILL.AUTO_BALANCE.TARGET", 0.5,
                             "MODEL.DISTILL.AUTO_BALANCE.BATCHES", 2, "OUTPUT_DIR", str(tmp_path)])
    run_cfg.freeze()
    (tmp_path / "config.yaml").write_text(run_cfg.dump())
    try:
        hook = LossBalanceHook(run_cfg)
        hook.trainer = _fake_trainer(model, run_cfg, batches)
        torch.manual_seed(0)
        hook.before_train()
        m = _measure(model, batches)
        for name in TERMS:
            assert m.ratio(name) == pytest.approx(0.5, rel=1e-5)
        record = json.loads((tmp_path / AUTO_BALANCE_FILE).read_text())
        assert record["target"] == 0.5 and record["weights"]["PyramidDistill"] == pytest.approx(m.weights["PyramidDistill"])
        saved = (tmp_path / "config.yaml").read_text()
        assert f"{m.weights['RegionDistill']}" in saved.replace("\n", " ")
        assert hook.trainer.cfg.MODEL.DISTILL.REGION.WEIGHT == pytest.approx(m.weights["RegionDistill"])

        record["weights"] = {"PyramidDistill": 0.125, "RegionDistill": 0.25, "LogitDistill": 0.5}
        (tmp_path / AUTO_BALANCE_FILE).write_text(json.dumps(record))
        resumed = LossBalanceHook(run_cfg)
        resumed.trainer = _fake_trainer(model, run_cfg, [], start_iter=7)  # no batch: nothing is measured
        resumed.before_train()
        assert [t.weight for t in model.distill_terms] == [0.125, 0.25, 0.5]
    finally:
        for t in model.distill_terms:
            t.weight = before[t.WEIGHT_KEY]


def test_auto_balance_off_leaves_weights(tiny, tmp_path):
    cfg, model, batches = tiny
    before = [t.weight for t in model.distill_terms]
    hook = LossBalanceHook(cfg)
    hook.trainer = _fake_trainer(model, cfg, batches)
    hook.before_train()
    assert [t.weight for t in model.distill_terms] == before


# ------------------------------------------------------------------ doctor
def _instances(boxes, scores):
    inst = Instances((64, 96))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    return inst


def test_teacher_check_on_hand_made_detections():
    gts = [Boxes(torch.tensor([[10.0, 8.0, 30.0, 56.0], [50.0, 8.0, 70.0, 56.0]]))]
    good = doctor.check_teacher_detections([_instances([[11, 8, 30, 55], [0, 0, 5, 5]], [0.95, 0.2])], gts,
                                           score_threshold=0.5, min_top_score=0.7, min_recall=0.1)
    assert good.ok and good.found == 1 and good.recall == pytest.approx(0.5) and good.top_score == pytest.approx(0.95)
    flat = doctor.check_teacher_detections([_instances([[11, 8, 30, 55]] * 3, [0.51, 0.5, 0.49])], gts, 0.5, 0.7, 0.1)
    assert not flat.ok and "top score 0.510" in flat.message and "MODEL.TEACHER.WEIGHTS" in flat.message
    wrong = doctor.check_teacher_detections([_instances([[80, 0, 95, 20]], [0.99])], gts, 0.5, 0.7, 0.1)
    assert not wrong.ok and wrong.found == 0 and "recall 0.00" in wrong.message


def test_mismatches_are_read_only_where_a_term_needs_them(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path, **{"MODEL.ANCHOR_GENERATOR.SIZES": [[20], [40], [80], [160], [320]]}))
    teacher = load_teacher_config(cfg)
    hkd = teacher_student_mismatches(cfg, teacher, frozenset({"features", "roi"}))
    assert [m.key for m in hkd] == ["MODEL.ANCHOR_GENERATOR.SIZES"] and not hkd[0].read
    rpn = teacher_student_mismatches(cfg, teacher, frozenset({"rpn"}))
    assert rpn[0].read and "READ by a distillation term" in rpn[0].describe()
    assert teacher_student_mismatches(cfg, cfg, frozenset({"rpn", "roi", "features"})) == []


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor_data") / "data"
    generate_synthetic(root, 4, 4, SyntheticConfig(width=96, height=64, seed=3, scale=2.0), formats=("citypersons",))
    names = {}
    for split in ("train", "val"):
        name = f"doctor_test_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_pedestrian_dataset(name, root / "citypersons" / "annotations" / f"anno_{split}.mat",
                                    image_root=root / "citypersons" / "leftImg8bit" / split)
        names[split] = name
    return names


def test_doctor_flags_a_random_teacher_and_reports_calibration(tmp_path, tiny_data):
    teacher = write_teacher(tmp_path, **{"MODEL.ANCHOR_GENERATOR.SIZES": [[20], [40], [80], [160], [320]]})
    cfg = hkd_cfg(teacher, **{"DATASETS.TRAIN": (tiny_data["train"],), "DATASETS.TEST": (tiny_data["val"],),
                              "INPUT.MIN_SIZE_TRAIN": (64,), "INPUT.MAX_SIZE_TRAIN": 96,
                              "INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 96, "DATALOADER.NUM_WORKERS": 0})
    cfg.freeze()
    result = doctor.run_doctor(cfg, num_images=2, num_batches=2, target=0.25, score=0.5, min_top_score=0.7,
                               min_recall=0.1)
    assert result["flagged"] and not result["teacher"].ok and result["teacher"].images == 2
    assert [m.key for m in result["mismatches"]] == ["MODEL.ANCHOR_GENERATOR.SIZES"]
    losses = result["losses"]
    for name in TERMS:
        assert result["balanced"][name] * losses.raw[name] == pytest.approx(0.25 * losses.detection)
    text = doctor.render(result, 0.25)
    assert "PROBLEM: The teacher detects (almost) nothing" in text and "note: MODEL.ANCHOR_GENERATOR.SIZES" in text
    assert "MODEL.DISTILL.PYRAMID.WEIGHT" in text

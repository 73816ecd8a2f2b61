"""Global-knowledge distillation: prototype selection, robust weights, losses; values by hand."""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, BoxMode, ImageList, Instances

from hkd_d2 import add_hkd_config
from hkd_d2.engine.prototype_hook import PrototypeHook, prototype_records
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.gkd import (
    GKDDistill,
    density_candidates,
    joint_matching_pursuit,
    robust_weights,
    select_prototypes,
)

from .hkd_helpers import TINY, _merge, build_hkd, write_teacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPES = {"p2": ShapeSpec(channels=2, stride=4)}
SQRT_HALF = math.sqrt(0.5)


def test_density_filter_drops_the_outlier():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Densities ~3, 3, 3, 1; the 0.4 quantile of 4 sorted values is the 2nd (3) -> keep the three.
    assert density_candidates(x, x, bandwidth=0.1, quantile=0.4).tolist() == [0, 1, 2]


def test_joint_matching_pursuit_picks_dominant_direction_then_the_rest():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Step 1: atom e1 explains two rows (error -4) vs e2 one row (-2) -> index 0 (first of the tie
    # 0/1). Step 2: rows 0, 1 are explained; e2 (index 2) gives -2, index 1 gives 0.
    chosen = joint_matching_pursuit(x, x, torch.arange(3), num=2, alpha=10.0)
    assert chosen.tolist() == [0, 2]
    # Never more atoms than candidates, never the same one twice.
    assert joint_matching_pursuit(x, x, torch.tensor([0, 2]), num=5).tolist() == [0, 2]


def test_select_prototypes_returns_raw_rows():
    s = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 5.0], [4.0, 0.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, -1.0], [3.0, 3.0]])
    p_s, p_t = select_prototypes(s, t, num=1, alpha=10.0, bandwidth=0.1, quantile=0.4)
    assert p_s.shape == (1, 2) and p_t.shape == (1, 2)
    assert p_s[0, 1].item() == 0.0 and p_s[0, 0].item() in (2.0, 3.0, 4.0)


def test_robust_weight_formula():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[1.0, 1.0]])
    # cos(s, P_s) = 1, cos(t, P_t) = 1/sqrt(2) -> r = 1 - (1 - 0.7071).
    r = robust_weights(s, t, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert r.item() == pytest.approx(SQRT_HALF, abs=1e-6)
    # Opposite placements clamp at 0; no prototypes -> 1.
    r = robust_weights(s, -s, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert r.item() == 0.0
    assert robust_weights(s, t, torch.zeros(0, 2), torch.zeros(0, 2)).tolist() == [1.0]


def make_term():
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.DISTILL.GKD.IN_FEATURES = ["p2"]
    term = GKDDistill(cfg, SHAPES, SHAPES)
    with torch.no_grad():
        term.adapters["p2"].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        term.adapters["p2"].bias.zero_()
    return term


def make_ctx(gt_class=0):
    """8x8 image, p2 is 2x2 (stride 4). gt box [0,0,4,4] covers location (0,0) only."""
    student = torch.zeros(1, 2, 2, 2)
    student[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    teacher = torch.zeros(1, 2, 2, 2)
    teacher[0, :, 0, 0] = torch.tensor([1.0, 1.0])  # fg squared error 1
    teacher[0, :, 0, 1] = torch.tensor([2.0, 0.0])  # bg squared error 4, other bg locations 0
    gt = Instances((8, 8), gt_boxes=Boxes(torch.tensor([[0.0, 0, 4, 4]])),
                   gt_classes=torch.tensor([gt_class]))
    return DistillContext(
        images=ImageList(torch.zeros(1, 3, 8, 8), [(8, 8)]),
        gt_instances=[gt],
        student_features={"p2": student.requires_grad_(True)},
        proposals=[],
        student_roi_features=torch.zeros(1, 2, 1, 1),
        student_predictions=(torch.tensor([[0.0, 0.0]]), torch.zeros(1, 4)),
        teacher_features={"p2": teacher},
        teacher_predictions=(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 4)),
    )


# KL(softmax([1,0]/2) || softmax([0,0]/2)) * 2^2.
P = 1 / (1 + math.exp(-0.5))
KD = 4 * (P * math.log(P / 0.5) + (1 - P) * math.log((1 - P) / 0.5))


def test_losses_by_hand_with_prototypes_and_attenuation():
    term = make_term()
    term.set_prototypes({(0, "p2"): (torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))})
    term.set_attenuation(0.5)
    ctx = make_ctx()
    losses = term(ctx)
    # Instance vectors are the maps at (0, 0): s = [1, 0], t = [1, 1] -> r = 0.7071.
    assert losses["loss_gkd_fg"].item() == pytest.approx(0.5 * 0.01 * SQRT_HALF * 1 / 2, rel=1e-5)
    assert losses["loss_gkd_bg"].item() == pytest.approx(0.5 * 0.0025 * 4 / (2 * 3), rel=1e-5)
    assert losses["loss_gkd_kd"].item() == pytest.approx(0.5 * 1.0 * KD, rel=1e-5)
    sum(losses.values()).backward()
    assert torch.isfinite(ctx.student_features["p2"].grad).all()


def test_class_without_prototypes_gets_weight_one():
    term = make_term()
    # Prototypes only for class 1; the instance is class 0.
    term.set_prototypes({(1, "p2"): (torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))})
    losses = term(make_ctx(gt_class=0))
    assert losses["loss_gkd_fg"].item() == pytest.approx(0.01 * 1 / 2, rel=1e-5)


def test_no_ground_truth_gives_zero_foreground_and_full_background():
    term = make_term()
    ctx = make_ctx()
    ctx.gt_instances = [Instances((8, 8), gt_boxes=Boxes(torch.zeros(0, 4)),
                                  gt_classes=torch.zeros(0, dtype=torch.long))]
    losses = term(ctx)
    assert losses["loss_gkd_fg"].item() == 0.0
    assert losses["loss_gkd_bg"].item() == pytest.approx(0.0025 * (1 + 4) / (2 * 4), rel=1e-5)


def test_ignore_boxes_are_neither_foreground_nor_background():
    term = make_term()
    ctx = make_ctx()
    ctx.gt_instances[0].gt_ignore = torch.tensor([True])
    losses = term(ctx)
    assert losses["loss_gkd_fg"].item() == 0.0
    assert losses["loss_gkd_bg"].item() == pytest.approx(0.0025 * 4 / (2 * 3), rel=1e-5)


def test_prototype_records_keep_large_non_ignored_boxes():
    ann = dict(bbox_mode=BoxMode.XYWH_ABS, category_id=0)
    records = [
        {"image_id": 0, "annotations": [dict(ann, bbox=[0, 0, 40, 80], ignore=0),
                                        dict(ann, bbox=[0, 0, 20, 80], ignore=0),
                                        dict(ann, bbox=[0, 0, 40, 80], ignore=1)]},
        {"image_id": 1, "annotations": [dict(ann, bbox=[0, 0, 10, 10], ignore=0)]},
    ]
    kept = prototype_records(records, min_box_size=30, max_images=0)
    assert [r["image_id"] for r in kept] == [0]
    assert kept[0]["annotations"] == [records[0]["annotations"][0]]
    assert len(records[0]["annotations"]) == 3  # input untouched


def test_prototype_hook_builds_prototypes_and_attenuates(tmp_path):
    records = []
    rng = np.random.RandomState(0)
    for i in range(3):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.randint(0, 255, (64, 96, 3), dtype=np.uint8)).save(path)
        ann = dict(bbox_mode=BoxMode.XYWH_ABS, category_id=0, ignore=0)
        annotations = [dict(ann, bbox=[10.0 + 5 * i, 4.0, 32.0, 50.0]), dict(ann, bbox=[50.0, 6.0, 36.0, 40.0])]
        records.append(dict(file_name=str(path), image_id=i, height=64, width=96, annotations=annotations))
    name = "_gkd_prototype_hook_test"
    DatasetCatalog.register(name, lambda: records)
    try:
        cfg = add_hkd_config(get_cfg())
        cfg.merge_from_file(str(CONFIGS / "synthetic" / "literature" / "gkd.yaml"))
        cfg = _merge(cfg, {**TINY, **write_teacher(tmp_path)})
        cfg.DATASETS.TRAIN = (name,)
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
        cfg.MODEL.DISTILL.GKD.NUM_PROTOTYPES = 2
        cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER = 2, 10
        model = build_hkd(cfg)
        hook = PrototypeHook(cfg)
        assert hook.period == 2  # one epoch: 3 images / 2 per batch, rounded up
        hook.trainer = SimpleNamespace(model=model, iter=0)
        model.train()
        hook.before_train()
        assert model.training  # restored after reading features in eval mode
        (term,) = hook.terms
        assert sorted(term.prototypes) == [(0, f) for f in sorted(["p2", "p3", "p4", "p5"])]
        p_s, p_t = term.prototypes[(0, "p3")]
        assert p_s.shape == (2, 32) and p_t.shape == (2, 32)
        hook.trainer.iter = 4
        hook.before_step()
        assert term.attenuation == pytest.approx(0.6)
    finally:
        DatasetCatalog.remove(name)

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
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.gkd import GKDDistill, robust_weights
from hkd_d2.modeling.distill.gkd_prototypes import (
    PrototypeHook,
    density_candidates,
    joint_matching_pursuit,
    prototype_records,
    select_prototypes,
)
from hkd_d2.modeling.recorders import ModelOutputs, RoIOutputs

from ..hkd_helpers import TINY, _merge, build_hkd, write_teacher
from ..conftest import CONFIGS

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


LEVELS = {"p2": 4, "p3": 8}
SHAPES2 = {f: ShapeSpec(channels=2, stride=st) for f, st in LEVELS.items()}


def make_term(**gkd):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.DISTILL.GKD.IN_FEATURES = list(LEVELS)
    # A box of sqrt(area) 16 px goes to P3, one of 8 px to P2.
    cfg.MODEL.DISTILL.GKD.CANONICAL_BOX_SIZE = 16
    cfg.MODEL.DISTILL.GKD.CANONICAL_LEVEL = 3
    for k, v in gkd.items():
        cfg.MODEL.DISTILL.GKD[k] = v
    term = GKDDistill(cfg, SHAPES2, SHAPES2)
    with torch.no_grad():
        for adapter in term.adapters.values():
            adapter.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            adapter.bias.zero_()
    return term


# Image 0: RoIs 0 (8x8 px -> P2, class 0), 1 (16x16 -> P3, class 1), 2 (background);
# image 1: RoI 3 (8x8 -> P2, class 0) and an ignore box. Images are 32x32.
ROI_BOXES = [[[0.0, 0, 8, 8], [8.0, 8, 24, 24], [0.0, 16, 8, 24]], [[16.0, 0, 24, 8]]]
ROI_CLASSES = [[0, 1, 2], [0]]
IGNORE_BOX = [0.0, 16, 16, 32]


def make_ctx(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = {f: torch.randn(2, 2, 32 // st, 32 // st, generator=g).requires_grad_(True) for f, st in LEVELS.items()}
    teacher = {f: torch.randn(2, 2, 32 // st, 32 // st, generator=g) for f, st in LEVELS.items()}
    proposals = [
        Instances((32, 32), proposal_boxes=Boxes(torch.tensor(b)), gt_classes=torch.tensor(c))
        for b, c in zip(ROI_BOXES, ROI_CLASSES)
    ]
    gt = [
        Instances((32, 32), gt_boxes=Boxes(torch.tensor([[0.0, 0, 8, 8]])), gt_classes=torch.tensor([0]),
                  gt_ignore=torch.tensor([False])),
        Instances((32, 32), gt_boxes=Boxes(torch.tensor([[16.0, 0, 24, 8], IGNORE_BOX])),
                  gt_classes=torch.tensor([0, 0]), gt_ignore=torch.tensor([False, True])),
    ]
    return DistillContext(
        images=ImageList(torch.zeros(2, 3, 32, 32), [(32, 32)] * 2),
        gt_instances=gt,
        proposals=proposals,
        student=ModelOutputs("student", features=student,
                             roi=RoIOutputs(torch.zeros(4, 2, 1, 1), torch.randn(4, 3, generator=g), torch.zeros(4, 8))),
        teacher=ModelOutputs("teacher", features=teacher,
                             roi=RoIOutputs(torch.zeros(4, 2, 1, 1), torch.randn(4, 3, generator=g), torch.zeros(4, 8))),
    )


def _box_mean(fmap, box, stride):
    """Mean of a (C, H, W) map over the box, by bilinear sampling at ROIAlign's adaptive grid."""
    x1, y1, x2, y2 = [v / stride - 0.5 for v in box]
    gh, gw = int(np.ceil(y2 - y1)), int(np.ceil(x2 - x1))
    values = []
    for iy in range(gh):
        for ix in range(gw):
            y, x = y1 + (iy + 0.5) * (y2 - y1) / gh, x1 + (ix + 0.5) * (x2 - x1) / gw
            y, x = max(y, 0.0), max(x, 0.0)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y0, x0 = min(y0, fmap.shape[1] - 1), min(x0, fmap.shape[2] - 1)
            yb, xb = min(y0 + 1, fmap.shape[1] - 1), min(x0 + 1, fmap.shape[2] - 1)
            ly, lx = y - y0, x - x0
            values.append((1 - ly) * (1 - lx) * fmap[:, y0, x0] + (1 - ly) * lx * fmap[:, y0, xb]
                          + ly * (1 - lx) * fmap[:, yb, x0] + ly * lx * fmap[:, yb, xb])
    return np.mean(values, axis=0)


def _cos_max(v, protos):
    return max(float(v @ p / (np.linalg.norm(v) * np.linalg.norm(p))) for p in protos)


def _oracle(ctx, prototypes, fg_weight=1.0, bg_weight=4.0, temperature=2.0):
    """The reference's losses with plain loops over RoIs, levels and locations."""
    s = {f: ctx.student.features[f].detach().numpy() for f in LEVELS}
    t = {f: ctx.teacher.features[f].numpy() for f in LEVELS}
    rois = []  # (image, box, class, level, r)
    for n, (boxes, classes) in enumerate(zip(ROI_BOXES, ROI_CLASSES)):
        for box, c in zip(boxes, classes):
            if c >= 2:
                continue
            size = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            level = "p2" if np.floor(3 + np.log2(size / 16)) <= 2 else "p3"
            r = 1.0
            if (c, level) in prototypes:
                p_s, p_t = (x.numpy() for x in prototypes[(c, level)])
                vs, vt = _box_mean(s[level][n], box, LEVELS[level]), _box_mean(t[level][n], box, LEVELS[level])
                r = min(1.0, max(0.0, 1 - abs(_cos_max(vs, p_s) - _cos_max(vt, p_t))))
            rois.append((n, box, c, level, r))
    fg_terms, bg_terms = [], []
    for f, stride in LEVELS.items():
        fg_num = fg_den = bg_num = bg_den = 0.0
        for n in range(2):
            for y in range(32 // stride):
                for x in range(32 // stride):
                    cy, cx = (y + 0.5) * stride, (x + 0.5) * stride
                    e = np.mean((s[f][n, :, y, x] - t[f][n, :, y, x]) ** 2)
                    m = max([r for (i, b, _, lvl, r) in rois if i == n and lvl == f
                             and b[0] <= cx < b[2] and b[1] <= cy < b[3]], default=0.0)
                    in_ignore = n == 1 and IGNORE_BOX[0] <= cx < IGNORE_BOX[2] and IGNORE_BOX[1] <= cy < IGNORE_BOX[3]
                    fg_num, fg_den = fg_num + e * m, fg_den + m
                    if m == 0 and not in_ignore:
                        bg_num, bg_den = bg_num + e, bg_den + 1
        fg_terms.append(fg_num / max(1.0, 2 * fg_den))
        bg_terms.append(bg_num / max(1.0, 2 * bg_den))
    zs, zt = ctx.student.roi.scores.numpy(), ctx.teacher.roi.scores.numpy()
    positive_rows = [0, 1, 3]
    kd = 0.0
    for (_, _, _, _, r), row in zip(rois, positive_rows):
        ps = np.exp(zs[row] / temperature) / np.exp(zs[row] / temperature).sum()
        pt = np.exp(zt[row] / temperature) / np.exp(zt[row] / temperature).sum()
        kd += r * temperature ** 2 * np.mean(pt * (np.log(pt) - np.log(ps)))
    return fg_weight * np.mean(fg_terms), bg_weight * np.mean(bg_terms), kd / len(rois)


PROTOTYPES = {
    (0, "p2"): (torch.tensor([[1.0, 0.0], [0.3, -1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])),
    (1, "p3"): (torch.tensor([[1.0, 1.0]]), torch.tensor([[-1.0, 0.5]])),
}


@pytest.mark.parametrize("prototypes", [{}, PROTOTYPES])
def test_losses_match_the_reference_formula(prototypes):
    term = make_term()
    term.set_prototypes(prototypes)
    ctx = make_ctx()
    losses = term(ctx)
    fg, bg, kd = _oracle(ctx, prototypes)
    assert losses["loss_gkd_fg"].item() == pytest.approx(fg, rel=1e-5)
    assert losses["loss_gkd_bg"].item() == pytest.approx(bg, rel=1e-5)
    assert losses["loss_gkd_kd"].item() == pytest.approx(kd, rel=1e-5)
    sum(losses.values()).backward()
    assert all(torch.isfinite(x.grad).all() for x in ctx.student.features.values())


def test_boxes_go_to_one_level_by_canonical_size():
    term = make_term()
    boxes = [Boxes(torch.tensor([[0.0, 0, 8, 8], [0.0, 0, 16, 16], [0.0, 0, 64, 64], [0.0, 0, 2, 2]]))]
    # sqrt(area) 8 -> P2, 16 -> P3, 64 -> P5 clamped to P3, 2 -> P0 clamped to P2.
    assert term.assign_levels(boxes).tolist() == [0, 1, 1, 0]


def test_only_the_feature_losses_are_attenuated():
    term = make_term()
    schedule = term.schedule
    assert schedule.loss_scale("loss_gkd_fg", 25) == schedule.loss_scale("loss_gkd_bg", 25)
    assert schedule.loss_scale("loss_gkd_fg", 0) == 1.0
    max_iter = schedule.max_iter
    assert schedule.loss_scale("loss_gkd_fg", max_iter // 4) == pytest.approx(0.75, abs=1.0 / max_iter)
    assert schedule.loss_scale("loss_gkd_kd", max_iter // 4) == 1.0
    assert make_term(ATTENUATE=False).schedule.loss_scale("loss_gkd_fg", max_iter // 4) == 1.0


def _pursuit_oracle(student, teacher, candidates, num, alpha):
    """Greedy joint matching pursuit with each step's coefficients from a 2x2 linear solve."""
    s, t = student.numpy().astype(np.float64), teacher.numpy().astype(np.float64)
    res_s, res_t = s.copy(), t.copy()
    chosen = []
    for _ in range(min(num, len(candidates))):
        best = None
        for k in candidates:
            if k in chosen:
                continue
            a, b = s[k], t[k]
            energy, coeffs = 0.0, []
            for n in range(len(s)):
                # minimise |rs - x a|^2 + |rt - y b|^2 + alpha (x - y)^2 over (x, y).
                m = np.array([[a @ a + alpha, -alpha], [-alpha, b @ b + alpha]])
                x, y = np.linalg.solve(m, np.array([res_s[n] @ a, res_t[n] @ b]))
                coeffs.append((x, y))
                energy += (np.sum((res_s[n] - x * a) ** 2) + np.sum((res_t[n] - y * b) ** 2)
                           + alpha * (x - y) ** 2)
            if best is None or energy < best[0] - 1e-9:
                best = (energy, k, coeffs)
        _, k, coeffs = best
        chosen.append(k)
        for n, (x, y) in enumerate(coeffs):
            res_s[n] -= x * s[k]
            res_t[n] -= y * t[k]
    return chosen


@pytest.mark.parametrize("alpha", [0.0, 1.0, 10.0])
def test_joint_matching_pursuit_matches_oracle_with_differing_spaces(alpha):
    g = torch.Generator().manual_seed(3)
    student = torch.nn.functional.normalize(torch.randn(9, 5, generator=g), dim=1)
    # The teacher's space differs: other dimension, and its geometry is not the student's.
    teacher = torch.nn.functional.normalize(torch.randn(9, 3, generator=g), dim=1)
    candidates = torch.tensor([0, 2, 3, 5, 6, 8])
    chosen = joint_matching_pursuit(student, teacher, candidates, num=4, alpha=alpha)
    assert chosen.tolist() == _pursuit_oracle(student, teacher, candidates.tolist(), 4, alpha)


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


def test_prototype_hook_builds_prototypes(tmp_path):
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
        # Boxes of sqrt(area) 27-38 px all go to P2 by the canonical rule (224 px on P4).
        assert sorted(term.prototypes) == [(0, "p2")]
        p_s, p_t = term.prototypes[(0, "p2")]
        assert p_s.shape == (2, 32) and p_t.shape == (2, 32)
    finally:
        DatasetCatalog.remove(name)

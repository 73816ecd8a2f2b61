"""FGFI term: imitation mask from anchors and the masked imitation loss; values by hand."""
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances

from hkd_d2 import add_hkd_config
from hkd_d2.modeling.distill import DistillContext, build_distill_terms
from hkd_d2.modeling.distill.fgfi import FGFIDistill, imitation_masks
from hkd_d2.modeling.recorders import ModelOutputs

SHAPES = {"p2": ShapeSpec(channels=1, stride=4)}


def make_cfg(psi=0.5):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.RPN.IN_FEATURES = ["p2"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.DISTILL.FGFI.IN_FEATURES = ["p2"]
    cfg.MODEL.DISTILL.FGFI.THRESHOLD_RATIO = psi
    cfg.MODEL.DISTILL.FGFI.ADAPTER_KERNEL_SIZE = 1
    return cfg


def make_term(psi=0.5):
    term = FGFIDistill(make_cfg(psi), SHAPES, SHAPES)
    with torch.no_grad():
        term.adapters["p2"].weight.fill_(1.0)
        term.adapters["p2"].bias.zero_()
    return term


def make_ctx(boxes, student, teacher):
    gt = Instances((8, 8), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)),
                   gt_classes=torch.zeros(len(boxes), dtype=torch.long))
    return DistillContext(
        images=ImageList(torch.zeros(1, 3, 8, 8), [(8, 8)]),
        gt_instances=[gt],
        proposals=[],
        student=ModelOutputs("student", features={"p2": student}),
        teacher=ModelOutputs("teacher", features={"p2": teacher}),
    )


# 2x2 map, stride 4, one 8x8 anchor per location centred at (0|4, 0|4):
# anchors [-4,-4,4,4], [0,-4,8,4], [-4,0,4,8], [0,0,8,8]. For gt [0,0,8,8] their IoUs are
# 16/112 = 1/7, 32/96 = 1/3, 1/3 and 1.
STUDENT = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
TEACHER = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])


def test_mask_keeps_only_the_best_anchor_at_psi_half():
    term = make_term(0.5)
    losses = term(make_ctx([[0, 0, 8, 8]], STUDENT, TEACHER))
    # Only location (1, 1): (4 - 1)^2 / (2 * 1); raw (the distiller applies the weight, 0.01).
    assert losses["loss_fgfi"].item() == pytest.approx(9 / 2) and term.weight == 0.01


def test_lower_psi_adds_the_one_third_iou_anchors():
    term = make_term(0.3)
    losses = term(make_ctx([[0, 0, 8, 8]], STUDENT, TEACHER))
    # Locations (0, 1), (1, 0), (1, 1): (4 + 9 + 9) / (2 * 3).
    assert losses["loss_fgfi"].item() == pytest.approx(22 / 6)


def test_mask_function_on_hand_built_anchors():
    anchors = [Boxes(torch.tensor([[-4.0, -4, 4, 4], [0, -4, 8, 4], [-4, 0, 4, 8], [0, 0, 8, 8]]))]
    gt = [Boxes(torch.tensor([[0.0, 0, 8, 8]])), Boxes(torch.zeros(0, 4))]
    masks = imitation_masks(gt, anchors, [(2, 2)], threshold_ratio=0.3)
    expected = torch.tensor([[[False, True], [True, True]], [[False, False], [False, False]]])
    assert torch.equal(masks[0], expected)


def test_empty_mask_gives_exact_zero_with_gradients():
    term = make_term(0.5)
    student = STUDENT.clone().requires_grad_(True)
    losses = term(make_ctx([], student, TEACHER))
    assert losses["loss_fgfi"].item() == 0.0
    losses["loss_fgfi"].backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))
    assert torch.equal(term.adapters["p2"].weight.grad, torch.zeros(1, 1, 1, 1))


def test_ignore_boxes_make_no_mask():
    term = make_term(0.5)
    ctx = make_ctx([[0, 0, 8, 8]], STUDENT, TEACHER)
    ctx.gt_instances[0].gt_ignore = torch.tensor([True])
    assert term(ctx)["loss_fgfi"].item() == 0.0


def test_built_from_terms_list_and_level_check():
    cfg = make_cfg()
    cfg.MODEL.DISTILL.TERMS = ["FGFIDistill"]
    terms = build_distill_terms(cfg, SHAPES, SHAPES)
    assert len(terms) == 1 and terms[0].teacher_needs == frozenset({"features"})
    cfg.MODEL.DISTILL.FGFI.WEIGHT = 0.0
    assert len(build_distill_terms(cfg, SHAPES, SHAPES)) == 0
    cfg.MODEL.DISTILL.FGFI.IN_FEATURES = ["p3"]
    with pytest.raises(ValueError, match="FGFI.IN_FEATURES"):
        FGFIDistill(cfg, SHAPES, SHAPES)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _fgfi_oracle(gt_boxes, student, teacher, levels, psi):
    """FGFI with plain loops: one square anchor per location of each level (size, stride),
    centred on the location's top-left corner (Detectron2's offset 0); a location imitates when
    one of its anchors has IoU > psi * max IoU of a gt box; sum of squared errors over the mask
    (and channels) over twice the mask locations, all levels together."""
    anchors = []  # (level, n-independent y, x, box)
    for f, (size, stride, (h, w)) in levels.items():
        for y in range(h):
            for x in range(w):
                cx, cy = x * stride, y * stride
                anchors.append((f, y, x, (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)))
    total, locations = 0.0, 0
    for n, boxes in enumerate(gt_boxes):
        hit = set()
        for box in boxes:
            ious = [_iou(box, a[3]) for a in anchors]
            best = max(ious)
            hit |= {(a[0], a[1], a[2]) for a, iou in zip(anchors, ious) if iou > psi * best and iou > 0}
        for f, y, x in hit:
            total += float(np.sum((student[f][n, :, y, x] - teacher[f][n, :, y, x]) ** 2))
            locations += 1
    return total / (2 * max(locations, 1))


def test_several_levels_match_the_reference_with_a_3x3_adapter():
    levels = {"p2": (16, 4, (8, 12)), "p3": (32, 8, (4, 6)), "p4": (64, 16, (2, 3))}
    shapes = {f: ShapeSpec(channels=3, stride=st) for f, (_, st, _) in levels.items()}
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.RPN.IN_FEATURES = list(levels)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[size] for size, _, _ in levels.values()]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.DISTILL.FGFI.IN_FEATURES = list(levels)
    term = FGFIDistill(cfg, shapes, shapes)
    assert all(a.kernel_size == (3, 3) for a in term.adapters.values())  # the authors' default
    with torch.no_grad():
        for adapter in term.adapters.values():  # identity 3x3 conv: A(s) = s
            adapter.weight.zero_()
            adapter.weight[:, :, 1, 1] = torch.eye(3)
            adapter.bias.zero_()
    g = torch.Generator().manual_seed(0)
    student = {f: torch.randn(2, 3, *hw, generator=g) for f, (_, _, hw) in levels.items()}
    teacher = {f: torch.randn(2, 3, *hw, generator=g) for f, (_, _, hw) in levels.items()}
    gt_boxes = [[[4.0, 2.0, 20.0, 30.0], [24.0, 4.0, 44.0, 28.0]], [[2.0, 0.0, 40.0, 32.0]]]
    ctx = DistillContext(
        images=ImageList(torch.zeros(2, 3, 32, 48), [(32, 48)] * 2),
        gt_instances=[Instances((32, 48), gt_boxes=Boxes(torch.tensor(b)), gt_classes=torch.zeros(len(b), dtype=torch.long))
                      for b in gt_boxes],
        proposals=[],
        student=ModelOutputs("student", features=student),
        teacher=ModelOutputs("teacher", features=teacher),
    )
    expected = _fgfi_oracle(gt_boxes, {f: v.numpy() for f, v in student.items()},
                            {f: v.numpy() for f, v in teacher.items()}, levels, 0.5)
    assert term(ctx)["loss_fgfi"].item() == pytest.approx(expected, rel=1e-5)
    assert ctx.stats["distill/fgfi_mask_locations"] > 3  # several levels take part


def test_imitation_starts_at_the_authors_iteration():
    term = FGFIDistill(make_cfg(), SHAPES, SHAPES)
    assert [term.schedule.loss_scale("loss_fgfi", i) for i in (0, 399, 400, 1000)] == [0.0, 0.0, 1.0, 1.0]

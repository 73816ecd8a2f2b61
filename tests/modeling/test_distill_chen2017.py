"""Chen et al. 2017 term: soft CE, teacher-bounded regression, hint, RPN part; values by hand."""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances

from hkd_d2 import add_hkd_config
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.chen2017 import Chen2017Distill, teacher_bounded_l2
from hkd_d2.modeling.recorders import ModelOutputs, RoIOutputs, RPNOutputs, StudentRPNOutputs


def make_cfg(**chen):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.RPN.IN_FEATURES = ["p2"]
    for k, v in chen.items():
        cfg.MODEL.DISTILL.CHEN2017[k] = v
    return cfg


SHAPES = {"p2": ShapeSpec(channels=1, stride=4)}


def make_ctx(scores_s, scores_t, deltas_s, deltas_t, gt=None):
    """One 8x16 image with RoI 0 foreground ([0,0,10,20] -> gt [1,1,11,21]) and RoI 1 background."""
    gt_instances = Instances((8, 16), gt_boxes=Boxes(torch.tensor([[1.0, 1, 11, 21]])),
                             gt_classes=torch.tensor([0])) if gt is None else gt
    proposals = Instances(
        (8, 16),
        proposal_boxes=Boxes(torch.tensor([[0.0, 0, 10, 20], [0.0, 0, 4, 4]])),
        gt_boxes=Boxes(torch.tensor([[1.0, 1, 11, 21], [1.0, 1, 11, 21]])),
        gt_classes=torch.tensor([0, 1]),
    )
    return DistillContext(
        images=ImageList(torch.zeros(1, 3, 8, 16), [(8, 16)]),
        gt_instances=[gt_instances],
        proposals=[proposals],
        student=ModelOutputs("student", features={"p2": torch.zeros(1, 1, 2, 4)},
                             roi=RoIOutputs(torch.zeros(2, 1, 1, 1), scores_s, deltas_s)),
        teacher=ModelOutputs("teacher", features={"p2": torch.zeros(1, 1, 2, 4)},
                             roi=RoIOutputs(torch.zeros(2, 1, 1, 1), scores_t, deltas_t)),
    )


def test_soft_cross_entropy_and_bounded_regression_by_hand():
    term = Chen2017Distill(make_cfg(RPN=False, HINT_WEIGHT=0.0), SHAPES, SHAPES)
    assert term.teacher_needs == frozenset({"roi"})
    scores_s = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    scores_t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # RoI 0 targets with Box2BoxTransform weights (10, 10, 5, 5): dx = 10 * 1/10, dy = 10 * 1/20.
    deltas_s = torch.tensor([[0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]], requires_grad=True)
    deltas_t = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    losses = term(make_ctx(scores_s, scores_t, deltas_s, deltas_t))

    e = math.e
    p_t_fg, p_t_bg = 1 / (1 + e), e / (1 + e)
    log_p_s_fg, log_p_s_bg = 1 - math.log(1 + e), -math.log(1 + e)
    soft = -(1.0 * p_t_fg * log_p_s_fg + 1.5 * p_t_bg * log_p_s_bg)
    assert losses["loss_chen2017_cls"].item() == pytest.approx(0.5 * soft, rel=1e-5)
    # student error 1^2 + 0.5^2 = 1.25 > teacher's 0 -> on; background RoI 1 ignored; / R = 2.
    assert losses["loss_chen2017_reg"].item() == pytest.approx(0.5 * 1.25 / 2, rel=1e-6)
    sum(losses.values()).backward()
    assert deltas_s.grad[1].abs().sum() == 0 and deltas_s.grad[0].abs().sum() > 0
    assert term.detector_loss_scales == {"loss_cls": 0.5}


def test_bounded_regression_switches_off_when_student_beats_teacher_by_margin():
    target = torch.zeros(1, 4)
    student = torch.tensor([[0.5, 0.0, 0.0, 0.0]])  # error 0.25
    teacher = torch.tensor([[1.0, 0.5, 0.0, 0.0]])  # error 1.25
    assert teacher_bounded_l2(student, teacher, target, margin=0.0).item() == 0.0
    assert teacher_bounded_l2(student, teacher, target, margin=1.0).item() == 0.0  # 1.25 > 1.25 is false
    assert teacher_bounded_l2(student, teacher, target, margin=1.5).item() == pytest.approx(0.25)
    assert teacher_bounded_l2(teacher, student, target, margin=0.0).item() == pytest.approx(1.25)


def test_hint_loss_through_adaptation_conv():
    term = Chen2017Distill(make_cfg(RPN=False, BOX_HEAD=False, HINT_FEATURES=["p2"]), SHAPES, SHAPES)
    assert term.teacher_needs == frozenset({"features"})
    with torch.no_grad():
        term.adapters["p2"].weight.fill_(2.0)
        term.adapters["p2"].bias.zero_()
    ctx = make_ctx(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 4))
    ctx.student["features"] = {"p2": torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])}
    ctx.teacher["features"] = {"p2": torch.full((1, 1, 2, 2), 2.0)}
    losses = term(ctx)
    # A(V) = 2V = 2, 4, 6, 8 vs 2: squared errors 0, 4, 16, 36 -> mean 14; gamma 0.5.
    assert set(losses) == {"loss_chen2017_hint"}
    assert losses["loss_chen2017_hint"].item() == pytest.approx(0.5 * 14.0)


def _rpn(objectness, deltas, anchors, labels=None, matched=None):
    if labels is None:
        return RPNOutputs([objectness], [deltas], [anchors])
    return StudentRPNOutputs([objectness], [deltas], [anchors], list(labels), list(matched))


def test_rpn_soft_objectness_and_bounded_regression_by_hand():
    term = Chen2017Distill(make_cfg(BOX_HEAD=False, HINT_WEIGHT=0.0), SHAPES, SHAPES)
    assert term.teacher_needs == frozenset({"rpn"})
    assert term.detector_loss_scales == {"loss_rpn_cls": 0.5}
    anchors = Boxes(torch.tensor([[0.0, 0, 10, 10], [20.0, 0, 30, 10]]))
    ctx = make_ctx(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 4))
    obj_s = torch.tensor([[[[0.0, 1.0]]]])  # (N, A, H, W) = (1, 1, 1, 2)
    obj_t = torch.tensor([[[[2.0, -1.0]]]])
    deltas_s = torch.zeros(1, 4, 1, 2)
    deltas_s[0, 0, 0, 0] = 0.5  # anchor 0: dx 0.5, target 0 -> error 0.25
    deltas_t = torch.zeros(1, 4, 1, 2)  # teacher exact -> error 0
    # The RPN's own labels: anchor 0 positive (matched to itself), anchor 1 background.
    labels, matched = torch.tensor([[1, 0]]), anchors.tensor.clone().unsqueeze(0)
    ctx.student["rpn"] = _rpn(obj_s, deltas_s, anchors, labels, matched)
    ctx.teacher["rpn"] = _rpn(obj_t, deltas_t, anchors)
    losses = term(ctx)

    def sig(z):
        return 1 / (1 + math.exp(-z))

    def soft(zs, zt):
        return -(sig(zt) * math.log(sig(zs)) + 1.5 * (1 - sig(zt)) * math.log(1 - sig(zs)))

    # Summed over the mini-batch, / (RPN.BATCH_SIZE_PER_IMAGE 256 * 1 image) like loss_rpn_cls.
    expected_soft = (soft(0.0, 2.0) + soft(1.0, -1.0)) / 256
    assert losses["loss_chen2017_rpn_cls"].item() == pytest.approx(0.5 * expected_soft, rel=1e-5)
    # 0.25 on the one positive anchor, / 256, nu 0.5.
    assert losses["loss_chen2017_rpn_reg"].item() == pytest.approx(0.5 * 0.25 / 256, rel=1e-5)


def test_rpn_losses_cover_the_rpns_sampled_minibatch_at_a_realistic_anchor_count():
    """3 anchors x 90 x 120 locations x 2 images (about 32,000 anchors per image, as at stride 8
    on 720x960): only the 256 anchors per image the RPN sampled (labels 0/1) count, including
    none of the -1 (ignore regions, unsampled)."""
    cfg = make_cfg(BOX_HEAD=False, HINT_WEIGHT=0.0, MU=0.25, BG_WEIGHT=2.0, TEMPERATURE=2.0)
    term = Chen2017Distill(cfg, SHAPES, SHAPES)
    g = torch.Generator().manual_seed(0)
    n, a, h, w = 2, 3, 90, 120
    num = a * h * w
    obj_s, obj_t = torch.randn(n, a, h, w, generator=g), torch.randn(n, a, h, w, generator=g)
    deltas_s, deltas_t = torch.randn(n, 4 * a, h, w, generator=g), torch.randn(n, 4 * a, h, w, generator=g)
    xy = torch.rand(num, 2, generator=g) * 900
    anchors = Boxes(torch.cat([xy, xy + 20 + torch.rand(num, 2, generator=g) * 60], dim=1))
    labels = torch.full((n, num), -1)
    for i in range(n):
        sampled = torch.randperm(num, generator=g)[:256]
        labels[i, sampled[:40]] = 1
        labels[i, sampled[40:]] = 0
    matched = anchors.tensor.unsqueeze(0).repeat(n, 1, 1) + torch.randn(n, num, 4, generator=g)
    ctx = make_ctx(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 4))
    ctx.student["rpn"] = _rpn(obj_s, deltas_s, anchors, labels, matched)
    ctx.teacher["rpn"] = _rpn(obj_t, deltas_t, anchors)
    losses = term(ctx)

    # Oracle: loops over the sampled anchors, in Detectron2's (H, W, A) anchor order.
    zs, zt = obj_s.permute(0, 2, 3, 1).reshape(n, -1).numpy(), obj_t.permute(0, 2, 3, 1).reshape(n, -1).numpy()
    ds = deltas_s.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4).numpy()
    dt = deltas_t.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4).numpy()
    box, gtb, lab = anchors.tensor.numpy(), matched.numpy(), labels.numpy()
    soft = bounded = 0.0
    for i in range(n):
        for j in np.nonzero(lab[i] >= 0)[0]:
            ps = np.exp([zs[i, j] / 2, 0.0]) / np.exp([zs[i, j] / 2, 0.0]).sum()
            pt = np.exp([zt[i, j] / 2, 0.0]) / np.exp([zt[i, j] / 2, 0.0]).sum()
            soft -= pt[0] * np.log(ps[0]) + 2.0 * pt[1] * np.log(ps[1])
            if lab[i, j] == 1:
                aw, ah = box[j, 2] - box[j, 0], box[j, 3] - box[j, 1]
                gw, gh = gtb[i, j, 2] - gtb[i, j, 0], gtb[i, j, 3] - gtb[i, j, 1]
                target = np.array([
                    ((gtb[i, j, 0] + gw / 2) - (box[j, 0] + aw / 2)) / aw,
                    ((gtb[i, j, 1] + gh / 2) - (box[j, 1] + ah / 2)) / ah,
                    np.log(gw / aw), np.log(gh / ah)])  # RPN.BBOX_REG_WEIGHTS (1, 1, 1, 1)
                err_s, err_t = np.sum((ds[i, j] - target) ** 2), np.sum((dt[i, j] - target) ** 2)
                bounded += err_s if err_s > err_t else 0.0
    assert losses["loss_chen2017_rpn_cls"].item() == pytest.approx(0.75 * soft / (256 * n), rel=1e-4)
    assert losses["loss_chen2017_rpn_reg"].item() == pytest.approx(0.5 * bounded / (256 * n), rel=1e-4)


def test_weight_is_left_to_the_distiller():
    """The term's raw losses do not depend on WEIGHT; the distiller multiplies every part by it."""
    cfg = make_cfg(RPN=False, HINT_WEIGHT=0.0, WEIGHT=3.0)
    term = Chen2017Distill(cfg, SHAPES, SHAPES)
    base = Chen2017Distill(make_cfg(RPN=False, HINT_WEIGHT=0.0), SHAPES, SHAPES)
    args = (torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
            torch.zeros(2, 4), torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    scaled, plain = term(make_ctx(*args)), base(make_ctx(*args))
    assert term.weight == 3.0 and base.weight == 1.0
    assert {k: v.item() for k, v in scaled.items()} == {k: v.item() for k, v in plain.items()}

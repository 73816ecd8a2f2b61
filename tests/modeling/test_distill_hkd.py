"""The HKD terms (PD, RD, LD): raw values, normalisation, weights, adapters, statistics."""
from dataclasses import replace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList

from hkd_d2.config import add_hkd_config
from hkd_d2.modeling.distill import DistillContext, build_distill_terms
from hkd_d2.modeling.distill.hkd import LogitDistill, PyramidDistill, RegionDistill
from hkd_d2.modeling.recorders import ModelOutputs, RoIOutputs

LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _cfg(**overrides):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _shapes(channels):
    return {k: ShapeSpec(channels=channels, stride=s) for k, s in LEVELS.items()}


def _ctx(student_value=1.0, teacher_value=0.0, rois=3, channels=4):
    def maps(value):
        return {k: torch.full((2, channels, 32 // s * 2, 48 // s * 2), value) for k, s in LEVELS.items()}

    def roi(value, deltas):
        return RoIOutputs(torch.full((rois, channels, 7, 7), value), torch.full((rois, 2), value), deltas)

    return DistillContext(
        images=ImageList(torch.zeros(2, 3, 64, 96), [(64, 96)] * 2),
        gt_instances=[],
        proposals=[],
        student=ModelOutputs("student", features=maps(student_value),
                             roi=roi(student_value, torch.full((rois, 4), 5.0))),
        teacher=ModelOutputs("teacher", features=maps(teacher_value), roi=roi(teacher_value, torch.zeros(rois, 4))),
    )


def test_pyramid_is_sum_over_levels_of_mean_squared_error():
    term = PyramidDistill(_cfg(**{"MODEL.DISTILL.PYRAMID.WEIGHT": 0.5}), _shapes(4), _shapes(4))
    ctx = _ctx(student_value=3.0, teacher_value=1.0)
    ctx.student.features["p3"] = ctx.student.features["p3"] + 1.0  # (4 - 1)^2 = 9 on P3
    out = term(ctx)
    # P2, P4, P5: (3 - 1)^2 = 4 each; P3: 9; P6 is not a PD level. Raw: the distiller applies the 0.5.
    assert out["loss_pd"].item() == pytest.approx(4 + 9 + 4 + 4) and term.weight == 0.5
    assert ctx.stats["distill/pd"].item() == pytest.approx(21.0)
    assert ctx.stats["distill/pd_p3"].item() == pytest.approx(9.0)
    assert term.teacher_needs == {"features"}


def test_pyramid_element_mean_weights_levels_by_their_size():
    term = PyramidDistill(_cfg(**{"MODEL.DISTILL.PYRAMID.REDUCTION": "element_mean"}), _shapes(4), _shapes(4))
    ctx = _ctx(student_value=3.0, teacher_value=1.0)
    ctx.student.features["p3"] = ctx.student.features["p3"] + 1.0  # 9 on P3, 4 elsewhere
    counts = {f: ctx.teacher.features[f].numel() for f in ("p2", "p3", "p4", "p5")}
    expected = sum((9.0 if f == "p3" else 4.0) * n for f, n in counts.items()) / sum(counts.values())
    assert term(ctx)["loss_pd"].item() == pytest.approx(expected)
    assert counts["p2"] / sum(counts.values()) > 0.7  # P2 dominates, as the key's comment says
    with pytest.raises(ValueError, match="REDUCTION 'median'"):
        PyramidDistill(_cfg(**{"MODEL.DISTILL.PYRAMID.REDUCTION": "median"}), _shapes(4), _shapes(4))


def test_region_is_mean_over_pooled_features():
    term = RegionDistill(_cfg(**{"MODEL.DISTILL.REGION.WEIGHT": 2.0}), _shapes(4), _shapes(4))
    ctx = _ctx(student_value=1.0, teacher_value=0.0)
    ctx.student.roi.features[0] = 3.0  # one RoI of three: mean of (9, 1, 1)
    out = term(ctx)
    assert out["loss_rd"].item() == pytest.approx((9 + 1 + 1) / 3) and term.weight == 2.0
    assert ctx.stats["distill/rd"].item() == pytest.approx(11 / 3)
    assert term.teacher_needs == {"roi"}


def test_logit_uses_class_scores_only():
    term = LogitDistill(_cfg(), _shapes(4), _shapes(4))
    ctx = _ctx(student_value=2.0, teacher_value=0.0)  # deltas differ by 5 but are not distilled
    assert term(ctx)["loss_ld"].item() == pytest.approx(4.0)
    assert ctx.stats["distill/ld"].item() == pytest.approx(4.0)


def test_empty_roi_batch_gives_zero_not_nan():
    ctx = _ctx(rois=0)
    ctx.student.roi.features.requires_grad_(True)
    rd = RegionDistill(_cfg(), _shapes(4), _shapes(4))(ctx)["loss_rd"]
    assert rd.item() == 0.0 and rd.requires_grad
    assert LogitDistill(_cfg(), _shapes(4), _shapes(4))(ctx)["loss_ld"].item() == 0.0


def test_adapters_map_student_channels_to_teacher():
    cfg = _cfg()
    pd = PyramidDistill(cfg, _shapes(4), _shapes(8))
    rd = RegionDistill(cfg, _shapes(4), _shapes(8))
    assert set(pd.adapters) == {"p2", "p3", "p4", "p5"}
    ctx = _ctx(channels=4)
    ctx.teacher["features"] = {k: v.repeat(1, 2, 1, 1) for k, v in ctx.teacher.features.items()}
    ctx.teacher["roi"] = replace(ctx.teacher.roi, features=ctx.teacher.roi.features.repeat(1, 2, 1, 1))
    assert torch.isfinite(pd(ctx)["loss_pd"]) and torch.isfinite(rd(ctx)["loss_rd"])
    assert rd.adapter.weight.shape == (8, 4, 1, 1)
    with pytest.raises(ValueError, match="ADAPT_CHANNELS"):
        PyramidDistill(_cfg(**{"MODEL.DISTILL.ADAPT_CHANNELS": False}), _shapes(4), _shapes(8))


def test_same_channels_need_no_adapter_parameters():
    terms = build_distill_terms(_cfg(), _shapes(4), _shapes(4))
    assert [type(t).__name__ for t in terms] == ["PyramidDistill", "RegionDistill", "LogitDistill"]
    assert sum(p.numel() for p in terms.parameters()) == 0


def test_mismatched_shapes_and_strides_are_refused():
    ctx = _ctx()
    ctx.teacher["roi"] = replace(ctx.teacher.roi, scores=torch.zeros(3, 5), deltas=torch.zeros(3, 16))
    with pytest.raises(ValueError, match="LogitDistill"):
        LogitDistill(_cfg(), _shapes(4), _shapes(4))(ctx)
    teacher = _shapes(4)
    teacher["p3"] = ShapeSpec(channels=4, stride=16)
    with pytest.raises(ValueError, match="stride"):
        PyramidDistill(_cfg(), _shapes(4), teacher)


def test_zero_weight_terms_are_left_out():
    cfg = _cfg(**{"MODEL.DISTILL.PYRAMID.WEIGHT": 0.0, "MODEL.DISTILL.LOGIT.WEIGHT": 0.0})
    terms = build_distill_terms(cfg, _shapes(4), _shapes(8))
    assert [type(t).__name__ for t in terms] == ["RegionDistill"]

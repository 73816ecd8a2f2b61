"""PKD term: Pearson-correlation loss of channel-standardised maps; values by hand."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList

from hkd_d2 import add_hkd_config
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.pkd import PKDDistill, pearson_loss

S = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
T = torch.tensor([2.0, 4.0, 7.0]).view(1, 1, 1, 3)
# Pearson r of (1, 2, 3) and (2, 4, 7): cov 5/3, var_s 2/3, var_t 114/27 -> r = 15 / sqrt(228).
ONE_MINUS_R = 1 - 15 / math.sqrt(228)


def test_pearson_loss_is_one_minus_r():
    assert pearson_loss(S, T).item() == pytest.approx(ONE_MINUS_R, abs=1e-5)


def test_pearson_loss_invariant_to_affine_maps_and_two_for_anticorrelation():
    x = torch.randn(2, 3, 4, 5)
    assert pearson_loss(x, 3 * x + 5).item() == pytest.approx(0.0, abs=1e-5)
    assert pearson_loss(x, -x).item() == pytest.approx(2.0, abs=1e-5)


def test_channels_are_standardised_over_batch_and_space_separately():
    # Channel 0 perfectly correlated, channel 1 anti-correlated -> mean of 0 and 2.
    s = torch.stack([S[:, 0], S[:, 0]], dim=1)
    t = torch.stack([T[:, 0] * 0 + S[:, 0] * 2, -S[:, 0]], dim=1)
    assert pearson_loss(s, t).item() == pytest.approx(1.0, abs=1e-5)


def test_term_sums_levels_with_weight_six():
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p2", "p3"]
    shapes = {f: ShapeSpec(channels=1, stride=s) for f, s in (("p2", 4), ("p3", 8))}
    term = PKDDistill(cfg, shapes, shapes)
    ctx = DistillContext(
        images=ImageList(torch.zeros(1, 3, 4, 12), [(4, 12)]),
        gt_instances=[],
        student_features={"p2": S, "p3": S},
        proposals=[],
        student_roi_features=torch.zeros(0),
        student_predictions=(torch.zeros(0, 2), torch.zeros(0, 4)),
        teacher_features={"p2": T, "p3": -S},
    )
    losses = term(ctx)
    assert losses["loss_pkd"].item() == pytest.approx(6 * (ONE_MINUS_R + 2.0), abs=1e-4)
    assert ctx.stats["distill/pkd_p3"].item() == pytest.approx(2.0, abs=1e-5)


def test_channel_mismatch_needs_adapter():
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p2"]
    student = {"p2": ShapeSpec(channels=2, stride=4)}
    teacher = {"p2": ShapeSpec(channels=4, stride=4)}
    assert isinstance(PKDDistill(cfg, student, teacher).adapters["p2"], torch.nn.Conv2d)
    cfg.MODEL.DISTILL.ADAPT_CHANNELS = False
    with pytest.raises(ValueError, match="ADAPT_CHANNELS"):
        PKDDistill(cfg, student, teacher)

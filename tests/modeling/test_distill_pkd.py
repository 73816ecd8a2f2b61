"""PKD term: Pearson-correlation loss of channel-standardised maps; values by hand."""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList

from hkd_d2 import add_hkd_config
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.pkd import PKDDistill, pearson_loss
from hkd_d2.modeling.recorders import ModelOutputs

S = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
T = torch.tensor([2.0, 4.0, 7.0]).view(1, 1, 1, 3)
# Pearson r of (1, 2, 3) and (2, 4, 7): cov 5/3, var_s 2/3, var_t 114/27 -> r = 15 / sqrt(228).
# With MMRazor's sample std over M = 3 values the half MSE is (1 - r) * (M - 1) / M.
ONE_MINUS_R = 1 - 15 / math.sqrt(228)
SAMPLE = 2 / 3


def _oracle(student: np.ndarray, teacher: np.ndarray, eps: float = 1e-6) -> float:
    """MMRazor's PKD loss with plain loops: per channel, standardise over (N, H, W) with the
    sample std, then half the mean squared difference over all elements."""
    total, count = 0.0, 0
    for c in range(student.shape[1]):
        s, t = student[:, c].ravel().astype(np.float64), teacher[:, c].ravel().astype(np.float64)
        zs = (s - s.mean()) / (s.std(ddof=1) + eps)
        zt = (t - t.mean()) / (t.std(ddof=1) + eps)
        for a, b in zip(zs, zt):
            total += (a - b) ** 2 / 2
            count += 1
    return total / count


def test_pearson_loss_is_one_minus_r():
    assert pearson_loss(S, T).item() == pytest.approx(ONE_MINUS_R * SAMPLE, abs=1e-5)


def test_pearson_loss_matches_the_reference_on_random_maps():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g) * 3 + 1
    assert pearson_loss(s, t).item() == pytest.approx(_oracle(s.numpy(), t.numpy()), rel=1e-5)


def test_pearson_loss_invariant_to_affine_maps_and_maximal_for_anticorrelation():
    x = torch.randn(2, 3, 4, 5)
    assert pearson_loss(x, 3 * x + 5).item() == pytest.approx(0.0, abs=1e-5)
    assert pearson_loss(x, -x).item() == pytest.approx(2.0 * 39 / 40, abs=1e-5)


def test_channels_are_standardised_over_batch_and_space_separately():
    # Channel 0 perfectly correlated, channel 1 anti-correlated -> mean of 0 and 2 (x 2/3).
    s = torch.stack([S[:, 0], S[:, 0]], dim=1)
    t = torch.stack([T[:, 0] * 0 + S[:, 0] * 2, -S[:, 0]], dim=1)
    assert pearson_loss(s, t).item() == pytest.approx(1.0 * SAMPLE, abs=1e-5)


def test_default_levels_are_the_reference_p2_to_p5():
    cfg = add_hkd_config(get_cfg())
    assert list(cfg.MODEL.DISTILL.PKD.IN_FEATURES) == ["p2", "p3", "p4", "p5"]
    assert cfg.MODEL.DISTILL.PKD.WEIGHT == 6.0


def test_term_sums_levels():
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p2", "p3"]
    shapes = {f: ShapeSpec(channels=1, stride=s) for f, s in (("p2", 4), ("p3", 8))}
    term = PKDDistill(cfg, shapes, shapes)
    ctx = DistillContext(
        images=ImageList(torch.zeros(1, 3, 4, 12), [(4, 12)]),
        gt_instances=[],
        proposals=[],
        student=ModelOutputs("student", features={"p2": S, "p3": S}),
        teacher=ModelOutputs("teacher", features={"p2": T, "p3": -S}),
    )
    losses = term(ctx)
    # Raw: the distiller multiplies by the weight, 6.
    assert losses["loss_pkd"].item() == pytest.approx((ONE_MINUS_R + 2.0) * SAMPLE, abs=1e-5) and term.weight == 6.0
    assert ctx.stats["distill/pkd_p3"].item() == pytest.approx(2.0 * SAMPLE, abs=1e-5)


def test_channel_mismatch_needs_adapter():
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p2"]
    student = {"p2": ShapeSpec(channels=2, stride=4)}
    teacher = {"p2": ShapeSpec(channels=4, stride=4)}
    assert isinstance(PKDDistill(cfg, student, teacher).adapters["p2"], torch.nn.Conv2d)
    cfg.MODEL.DISTILL.ADAPT_CHANNELS = False
    with pytest.raises(ValueError, match="ADAPT_CHANNELS"):
        PKDDistill(cfg, student, teacher)

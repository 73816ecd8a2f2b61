"""PedestrianROIHeads: pooler choice, pool_and_predict, ignore-aware proposal sampling."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hkd_d2.config import add_hkd_config
from hkd_d2.modeling import PedestrianROIHeads, PyRoIAlign
from ..conftest import CONFIGS

CONFIG = CONFIGS / "synthetic" / "student_R18_FPN.yaml"
IMAGE_HW = (64, 96)
FPN_CHANNELS = 32

GT_BOX = [10.0, 10.0, 30.0, 60.0]
IGNORE_BOX = [50.0, 5.0, 90.0, 60.0]
PROPOSALS = {
    "on_gt": [11.0, 11.0, 30.0, 59.0],  # IoU with GT_BOX > 0.5: positive
    "inside_ignore": [55.0, 10.0, 75.0, 50.0],  # background, fully inside IGNORE_BOX
    "half_in_ignore": [30.0, 20.0, 70.0, 40.0],  # background, half its area inside IGNORE_BOX
    "is_ignore_box": IGNORE_BOX,  # would be a positive if ignore boxes were matched
    "elsewhere": [0.0, 0.0, 8.0, 8.0],  # background, no ignore overlap
}


def _cfg(**overrides):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FPN.OUT_CHANNELS = FPN_CHANNELS
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # sample every proposal
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _roi_heads(**overrides):
    shapes = {f"p{lvl}": ShapeSpec(channels=FPN_CHANNELS, stride=2**lvl) for lvl in range(2, 7)}
    torch.manual_seed(0)
    return build_roi_heads(_cfg(**overrides), shapes)


def _proposals(names=tuple(PROPOSALS)):
    p = Instances(IMAGE_HW)
    p.proposal_boxes = Boxes(torch.tensor([PROPOSALS[n] for n in names]))
    p.objectness_logits = torch.zeros(len(names))
    return p


def _targets(with_ignore: bool, ignore_field: bool = True):
    boxes = [GT_BOX, IGNORE_BOX] if with_ignore else [GT_BOX]
    t = Instances(IMAGE_HW)
    t.gt_boxes = Boxes(torch.tensor(boxes))
    t.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
    if ignore_field:
        t.gt_ignore = torch.tensor([False, True][: len(boxes)])
    return t


def _sample(roi_heads, targets):
    """Sampled proposals of one image as {box: label}; labels: 0 person, 1 background."""
    with EventStorage():
        (sampled,) = roi_heads.label_and_sample_proposals([_proposals()], [targets])
    boxes = sampled.proposal_boxes.tensor
    return {tuple(b.tolist()): int(c) for b, c in zip(boxes, sampled.gt_classes)}


def _box(name):
    return tuple(PROPOSALS[name])


@pytest.mark.parametrize("pooler_name", ["LevelROIPooler", "PyRoIAlign"])
def test_pool_and_predict_shapes(pooler_name):
    model = build_model(_cfg(**{"MODEL.ROI_BOX_HEAD.POOLER_NAME": pooler_name})).eval()
    roi_heads = model.roi_heads
    assert isinstance(roi_heads, PedestrianROIHeads)
    assert isinstance(roi_heads.box_pooler, PyRoIAlign) == (pooler_name == "PyRoIAlign")
    assert ("box_pooler.fuse.weight" in roi_heads.state_dict()) == (pooler_name == "PyRoIAlign")

    images = model.preprocess_image([{"image": torch.rand(3, *IMAGE_HW) * 255} for _ in range(2)])
    features = model.backbone(images.tensor)
    proposals = [_proposals(), _proposals(("on_gt", "elsewhere"))]
    with torch.no_grad():
        pooled, (scores, deltas) = roi_heads.pool_and_predict(features, proposals)
    size = model.roi_heads.box_pooler.output_size
    assert pooled.shape == (7, FPN_CHANNELS, *size)
    assert scores.shape == (7, 2)  # K = 1 class + background
    assert deltas.shape == (7, 4)
    assert torch.isfinite(scores).all() and torch.isfinite(deltas).all()


def test_training_step_gives_finite_losses_with_ignore_targets():
    model = build_model(_cfg(**{"MODEL.ROI_BOX_HEAD.POOLER_NAME": "PyRoIAlign"})).train()
    inputs = [{"image": torch.rand(3, *IMAGE_HW) * 255, "instances": _targets(True)}]
    with EventStorage():
        losses = model(inputs)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_pooler.fuse.weight.grad.abs().sum() > 0


def test_proposals_in_ignore_regions_are_never_sampled():
    sampled = _sample(_roi_heads(), _targets(with_ignore=True))
    background = 1  # num_classes
    assert _box("inside_ignore") not in sampled
    assert _box("half_in_ignore") not in sampled  # IoA 0.5 >= threshold 0.5
    assert _box("is_ignore_box") not in sampled
    assert sampled[_box("on_gt")] == 0
    assert sampled[tuple(GT_BOX)] == 0  # only the non-ignored gt is appended
    assert sampled[_box("elsewhere")] == background
    assert len(sampled) == 3


def test_detectron2_with_crowds_dropped_samples_them_as_background():
    """The contrast: StandardROIHeads on the same image whose ignore box was dropped."""
    standard = _roi_heads(**{"MODEL.ROI_HEADS.NAME": "StandardROIHeads"})
    sampled = _sample(standard, _targets(with_ignore=False, ignore_field=False))
    assert sampled[_box("inside_ignore")] == 1
    assert sampled[_box("half_in_ignore")] == 1
    assert sampled[_box("is_ignore_box")] == 1


def test_ioa_threshold_is_respected():
    sampled = _sample(
        _roi_heads(**{"MODEL.IGNORE_REGIONS.IOA_THRESHOLD": 0.75}), _targets(with_ignore=True)
    )
    assert _box("inside_ignore") not in sampled
    assert sampled[_box("half_in_ignore")] == 1


def test_positive_inside_ignore_region_stays_positive():
    targets = _targets(with_ignore=True)
    targets.gt_boxes = Boxes(torch.tensor([GT_BOX, [0.0, 0.0, 40.0, 64.0]]))  # ignore covers gt
    sampled = _sample(_roi_heads(), targets)
    assert sampled[_box("on_gt")] == 0
    assert _box("elsewhere") not in sampled


def test_switch_off_samples_background_but_never_matches_ignore_boxes():
    sampled = _sample(
        _roi_heads(**{"MODEL.IGNORE_REGIONS.ENABLED": False}), _targets(with_ignore=True)
    )
    assert sampled[_box("inside_ignore")] == 1
    assert sampled[_box("is_ignore_box")] == 1  # background, not a positive
    assert tuple(IGNORE_BOX) in sampled and sampled[tuple(IGNORE_BOX)] == 1
    assert sampled[_box("on_gt")] == 0


def test_targets_without_ignore_field_match_standard_roi_heads():
    many = Instances(IMAGE_HW)
    torch.manual_seed(3)
    xy = torch.rand(300, 2) * torch.tensor([80.0, 50.0])
    wh = torch.rand(300, 2) * 30 + 2
    many.proposal_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    many.objectness_logits = torch.zeros(300)
    results = []
    for name in ("PedestrianROIHeads", "StandardROIHeads"):
        roi_heads = _roi_heads(
            **{"MODEL.ROI_HEADS.NAME": name, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64}
        )
        torch.manual_seed(7)
        with EventStorage():
            (s,) = roi_heads.label_and_sample_proposals([many], [_targets(False, False)])
        results.append(s)
    torch.testing.assert_close(results[0].proposal_boxes.tensor, results[1].proposal_boxes.tensor)
    torch.testing.assert_close(results[0].gt_classes, results[1].gt_classes)
    assert len(results[0]) == 64

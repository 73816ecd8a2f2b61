"""PedestrianRPN: anchor labelling with ignore regions."""
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_proposal_generator
from detectron2.structures import Boxes, Instances

from hkd_d2.config import add_hkd_config
from hkd_d2.modeling import PedestrianRPN
from ..conftest import CONFIGS

CONFIG = CONFIGS / "synthetic" / "student_R18_FPN.yaml"
IMAGE_HW = (64, 96)

GT_BOX = [10.0, 10.0, 30.0, 60.0]
IGNORE_BOX = [50.0, 5.0, 90.0, 60.0]
ANCHORS = [
    [10.0, 11.0, 30.0, 60.0],  # IoU with GT_BOX > 0.7: positive
    [55.0, 10.0, 75.0, 50.0],  # background, fully inside IGNORE_BOX
    IGNORE_BOX,  # would be positive if ignore boxes were matched
    [0.0, 0.0, 8.0, 8.0],  # background, no ignore overlap
]
POSITIVE, INSIDE_IGNORE, IS_IGNORE_BOX, ELSEWHERE = range(4)


def _rpn(**overrides):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    shapes = {f"p{level}": ShapeSpec(channels=32, stride=2**level) for level in range(2, 7)}
    torch.manual_seed(0)
    return build_proposal_generator(cfg, shapes)


def _targets(boxes, ignore=None):
    t = Instances(IMAGE_HW)
    t.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
    t.gt_classes = torch.zeros(len(t.gt_boxes), dtype=torch.int64)
    if ignore is not None:
        t.gt_ignore = torch.tensor(ignore, dtype=torch.bool)
    return t


def _label(rpn, targets, anchors=ANCHORS):
    # Anchors come per feature map; split in two maps to exercise the concatenation.
    anchors = torch.tensor(anchors)
    per_map = [Boxes(anchors[:2]), Boxes(anchors[2:])]
    labels, matched = rpn.label_and_sample_anchors(per_map, [targets])
    return labels[0].tolist(), matched[0]


def test_anchors_in_ignore_regions_get_label_minus_one():
    rpn = _rpn()
    assert isinstance(rpn, PedestrianRPN)
    labels, matched = _label(rpn, _targets([GT_BOX, IGNORE_BOX], [False, True]))
    assert labels == [1, -1, -1, 0]
    assert matched[POSITIVE].tolist() == GT_BOX


def test_detectron2_rpn_with_crowds_dropped_labels_them_background():
    """The contrast: Detectron2's RPN on the same image whose ignore box was dropped."""
    rpn = _rpn(**{"MODEL.PROPOSAL_GENERATOR.NAME": "RPN"})
    assert type(rpn).__name__ == "RPN"
    labels, _ = _label(rpn, _targets([GT_BOX]))
    assert labels == [1, 0, 0, 0]


def test_switch_off_never_matches_ignore_boxes():
    rpn = _rpn(**{"MODEL.IGNORE_REGIONS.ENABLED": False})
    labels, _ = _label(rpn, _targets([GT_BOX, IGNORE_BOX], [False, True]))
    assert labels == [1, 0, 0, 0]


def test_image_with_only_ignore_boxes():
    labels, matched = _label(_rpn(), _targets([IGNORE_BOX], [True]))
    assert labels == [0, -1, -1, 0]
    assert bool((matched == 0).all())


def test_ioa_threshold_is_respected():
    half_inside = [30.0, 20.0, 70.0, 40.0]  # half its area inside IGNORE_BOX
    anchors = [ANCHORS[POSITIVE], half_inside]
    targets = _targets([GT_BOX, IGNORE_BOX], [False, True])
    labels, _ = _label(_rpn(), targets, anchors)
    assert labels == [1, -1]
    labels, _ = _label(_rpn(**{"MODEL.IGNORE_REGIONS.IOA_THRESHOLD": 0.75}), targets, anchors)
    assert labels == [1, 0]


def test_targets_without_ignore_field_match_detectron2_rpn():
    torch.manual_seed(3)
    xy = torch.rand(2000, 2) * torch.tensor([80.0, 50.0])
    wh = torch.rand(2000, 2) * 30 + 2
    anchors = torch.cat([xy, xy + wh], dim=1).tolist()
    results = []
    for name in ("PedestrianRPN", "RPN"):
        rpn = _rpn(**{"MODEL.PROPOSAL_GENERATOR.NAME": name})
        torch.manual_seed(7)
        results.append(_label(rpn, _targets([GT_BOX, [40.0, 5.0, 60.0, 55.0]]), anchors))
    assert results[0][0] == results[1][0]
    torch.testing.assert_close(results[0][1], results[1][1])
    assert sum(label >= 0 for label in results[0][0]) == 256  # subsampled to the RPN batch

"""PyRoIAlign and the box-pooler registry."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from hkd_d2.config import add_hkd_config
from hkd_d2.modeling import ROI_POOLER_REGISTRY, PyRoIAlign, build_box_pooler

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
CHANNELS = 4
SIZE = 7
IMAGE_HW = (64, 96)


def _features(batch: int = 2):
    torch.manual_seed(0)
    h, w = IMAGE_HW
    return [torch.randn(batch, CHANNELS, int(h * s), int(w * s)) for s in SCALES]


def _boxes():
    return [
        Boxes(
            torch.tensor([[4.0, 6.0, 30.0, 60.0], [40.0, 2.0, 90.0, 50.0], [0.0, 0.0, 8.0, 8.0]])
        ),
        Boxes(torch.tensor([[10.0, 10.0, 70.0, 62.0], [50.0, 20.0, 60.0, 44.0]])),
    ]


def _pooler(fuse_relu: bool = True) -> PyRoIAlign:
    torch.manual_seed(1)
    return PyRoIAlign(
        output_size=SIZE, scales=SCALES, sampling_ratio=2, in_channels=CHANNELS, fuse_relu=fuse_relu
    )


def test_output_shape_and_values_match_per_level_roialign_then_conv():
    pooler = _pooler(fuse_relu=False)
    feats, boxes = _features(), _boxes()
    out = pooler(feats, boxes)
    assert out.shape == (5, CHANNELS, SIZE, SIZE)

    image_index = [torch.full((len(b), 1), float(i)) for i, b in enumerate(boxes)]
    rois = torch.cat([torch.cat([i, b.tensor], dim=1) for i, b in zip(image_index, boxes)])
    per_level = [
        roi_align(f, rois, SIZE, spatial_scale=s, sampling_ratio=2, aligned=True)
        for f, s in zip(feats, SCALES)
    ]
    expected = F.conv2d(torch.cat(per_level, dim=1), pooler.fuse.weight, pooler.fuse.bias)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("level", range(len(SCALES)))
def test_every_level_contributes_to_every_roi(level):
    pooler = _pooler()
    feats, boxes = _features(), _boxes()
    before = pooler(feats, boxes)
    feats[level] = feats[level] + 1.0
    after = pooler(feats, boxes)
    changed = (after - before).abs().flatten(1).amax(dim=1)
    assert bool((changed > 1e-4).all()), changed


def test_rois_only_see_their_own_image():
    pooler = _pooler()
    feats, boxes = _features(), _boxes()
    before = pooler(feats, boxes)
    feats = [torch.cat([f[:1], f[1:] + 5.0]) for f in feats]
    after = pooler(feats, boxes)
    torch.testing.assert_close(after[:3], before[:3])
    assert not torch.allclose(after[3:], before[3:])


def test_fuse_relu_switch():
    with_relu, without_relu = _pooler(fuse_relu=True), _pooler(fuse_relu=False)
    without_relu.load_state_dict(with_relu.state_dict())
    feats, boxes = _features(), _boxes()
    linear = without_relu(feats, boxes)
    rectified = with_relu(feats, boxes)
    assert bool((linear < 0).any())
    assert bool((rectified >= 0).all())
    torch.testing.assert_close(rectified, linear.clamp(min=0))


def test_fuse_conv_init_and_gradient():
    pooler = _pooler()
    assert pooler.fuse.weight.shape == (CHANNELS, len(SCALES) * CHANNELS, 1, 1)
    assert bool((pooler.fuse.bias == 0).all())
    pooler(_features(), _boxes()).sum().backward()
    assert pooler.fuse.weight.grad is not None and pooler.fuse.weight.grad.abs().sum() > 0


def test_no_boxes_gives_empty_output():
    out = _pooler()(_features(), [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))])
    assert out.shape == (0, CHANNELS, SIZE, SIZE)


def _cfg(pooler_name: str):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = SIZE
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME = pooler_name
    return cfg


INPUT_SHAPE = {
    f"p{i + 2}": ShapeSpec(channels=CHANNELS, stride=int(1 / s)) for i, s in enumerate(SCALES)
}


def test_registry_names():
    assert {"LevelROIPooler", "PyRoIAlign"} <= {name for name, _ in ROI_POOLER_REGISTRY}


def test_build_level_pooler_equals_detectron2_roipooler():
    pooler = build_box_pooler(_cfg("LevelROIPooler"), INPUT_SHAPE)
    reference = ROIPooler(SIZE, SCALES, 2, "ROIAlignV2")
    feats, boxes = _features(), _boxes()
    torch.testing.assert_close(pooler(feats, boxes), reference(feats, boxes))
    assert not list(pooler.parameters())


def test_build_pyroialign_from_config():
    cfg = _cfg("PyRoIAlign")
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_RELU = False
    pooler = build_box_pooler(cfg, INPUT_SHAPE)
    assert isinstance(pooler, PyRoIAlign)
    assert pooler.fuse.activation is None
    assert all(p.aligned for p in pooler.level_poolers)
    assert [p.spatial_scale for p in pooler.level_poolers] == list(SCALES)
    assert pooler(_features(), _boxes()).shape == (5, CHANNELS, SIZE, SIZE)


def test_pyroialign_rejects_unequal_channels():
    shape = dict(INPUT_SHAPE, p5=ShapeSpec(channels=CHANNELS * 2, stride=32))
    with pytest.raises(ValueError, match="equal channels"):
        build_box_pooler(_cfg("PyRoIAlign"), shape)


def test_mean_fuse_init_starts_as_the_mean_over_levels():
    torch.manual_seed(1)
    pooler = PyRoIAlign(output_size=SIZE, scales=SCALES, sampling_ratio=2, in_channels=CHANNELS, fuse_relu=False,
                        fuse_init="mean")
    feats, boxes = _features(), _boxes()
    rois = convert_boxes_to_pooler_format(boxes)
    per_level = [level_pooler(f, rois) for level_pooler, f in zip(pooler.level_poolers, feats)]
    torch.testing.assert_close(pooler(feats, boxes), torch.stack(per_level).mean(dim=0))
    with pytest.raises(ValueError, match="unknown fuse_init 'zeros'"):
        PyRoIAlign(output_size=SIZE, scales=SCALES, sampling_ratio=2, in_channels=CHANNELS, fuse_init="zeros")


def test_msra_fuse_init_roughly_doubles_the_rms():
    """Docstring claim: He-normal fusion of 4 levels gives about 2x the RMS of one level (with ReLU)."""
    pooler = _pooler(fuse_relu=True)
    feats, boxes = _features(), _boxes()
    rois = convert_boxes_to_pooler_format(boxes)
    one_level = pooler.level_poolers[0](feats[0], rois)
    ratio = pooler(feats, boxes).pow(2).mean().sqrt() / one_level.pow(2).mean().sqrt()
    assert 1.2 < float(ratio) < 3.5

"""The compact and MobileNetV2 backbones: shapes, stitching from trained blocks, weights on disk,
torchvision weights, and two HKD training iterations with each as the student."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from torch import nn
from torchvision.models import mobilenet_v2

from hkd_d2.checkpoint import DistillCheckpointer, load_detector_weights
from hkd_d2.compress import build_candidate, candidate_grid, fit_interface, stitch_state_dict
from hkd_d2.compress.candidates import CandidateSet
from hkd_d2.compress.stitch import compact_overrides, config_with, write_config, write_weights
from hkd_d2.compress.teacher_stages import TeacherStages
from hkd_d2.config import add_hkd_config
from hkd_d2.engine.setup import load_config
from hkd_d2.modeling.backbone import StageSpec, build_compact_stage, stage_specs

from ..conftest import CONFIGS
from ..hkd_helpers import TINY, _merge, batch, hkd_cfg, train_iterations, write_teacher

STUDENT = CONFIGS / "synthetic" / "student_R18_FPN.yaml"
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
# One candidate of another kind per stage (index into each stage's candidates of KINDS x WIDTHS).
KINDS = CandidateSet(kinds=("basic", "bottleneck", "inverted_residual", "separable"), depths=(1, 2),
                     widths=(0.5,), expansions=(4.0,))


def _student_cfg(**keys):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(STUDENT))
    return _merge(cfg, {**TINY, "MODEL.BACKBONE.NAME": "build_compact_fpn_backbone", **keys})


def _assert_pyramid(features, channels, height=64, width=96):
    assert sorted(features) == sorted(STRIDES)
    for name, stride in STRIDES.items():
        assert tuple(features[name].shape) == (2, channels, math.ceil(height / stride), math.ceil(width / stride)), name


def test_default_compact_backbone_is_resnet18_like_with_projections():
    backbone = build_backbone(_student_cfg())
    shapes = backbone.bottom_up.output_shape()
    assert [(shapes[f].channels, shapes[f].stride) for f in ("res2", "res3", "res4", "res5")] == \
        [(64, 4), (128, 8), (256, 16), (512, 32)]
    # res3: two basic blocks, then the linear 1x1 projection
    assert len(backbone.bottom_up.res3) == 3 and isinstance(backbone.bottom_up.res3[2].layer, nn.Conv2d)
    _assert_pyramid(backbone(torch.randn(2, 3, 64, 96)), 32)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "inverted_residual", "separable"])
def test_every_kind_keeps_the_stage_shape(kind):
    # A strided stage whose width equals its input (a strided identity shortcut would not fit).
    blocks = build_compact_stage(StageSpec(kind, 2, 24, 6.0, 40), in_channels=24, stride=2, norm="GN")
    out = nn.Sequential(*blocks)(torch.randn(2, 24, 16, 12))
    assert tuple(out.shape) == (2, 40, 8, 6)


def test_bad_compact_keys_are_named():
    with pytest.raises(ValueError, match="MODEL.COMPACT lists need one entry per stage.*DEPTHS"):
        stage_specs(_student_cfg(**{"MODEL.COMPACT.DEPTHS": [1, 1, 1]}))
    with pytest.raises(KeyError, match="Unknown compact block kind 'ghost'"):
        build_backbone(_student_cfg(**{"MODEL.COMPACT.BLOCKS": ["basic", "ghost", "basic", "basic"]}))


@pytest.fixture(scope="module")
def stitched(tmp_path_factory):
    """A tiny R50 teacher, an interface fitted on its maps, one candidate per stage (four kinds,
    perturbed as if trained), and the compact student stitched from them."""
    tmp = tmp_path_factory.mktemp("stitch")
    files = write_teacher(tmp, depth=50, norm="GN")
    teacher = TeacherStages(files["MODEL.TEACHER.CONFIG_FILE"], files["MODEL.TEACHER.WEIGHTS"])
    interface = fit_interface([teacher(batch(seed=s)) for s in range(2)], [32, 48, 64, 96])
    grid = candidate_grid(interface.channels, KINDS)
    torch.manual_seed(0)
    picks = [grid[k][2 * k + 1] for k in range(4)]  # basic x2, bottleneck x2, inverted_residual x2, separable x2
    stages = [build_candidate(c, "GN") for c in picks]
    for stage in stages:
        for p in stage.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    overrides = compact_overrides([c.spec for c in picks], 64, "", "GN", teacher.cfg)
    cfg = config_with(str(STUDENT), {**overrides, "MODEL": {**overrides["MODEL"], "DEVICE": "cpu"}})
    student = build_model(cfg)
    state = stitch_state_dict(student, teacher.detector, stages, interface)
    student.load_state_dict(state)
    return {"tmp": tmp, "teacher": teacher, "interface": interface, "stages": stages, "picks": picks,
            "overrides": overrides, "student": student.eval(), "state": state}


def test_stitched_backbone_equals_the_blocks_in_sequence(stitched):
    teacher, interface, stages = stitched["teacher"], stitched["interface"], stitched["stages"]
    student = stitched["student"]
    assert [c.spec.kind for c in stitched["picks"]] == ["basic", "bottleneck", "inverted_residual", "separable"]
    images = torch.randn(2, 3, 64, 96) * 50
    with torch.no_grad():
        x = stem = teacher.bottom_up.stem(images)
        codes = []
        for stage in stages:
            x = stage.eval()(x)
            codes.append(x)
        bottom_up = student.backbone.bottom_up(images)
        for name, code in zip(("res2", "res3", "res4", "res5"), codes):
            assert torch.allclose(bottom_up[name], code, atol=1e-5, rtol=1e-4), name

        class Decoded(nn.Module):
            def forward(self, _):
                maps = interface.decode([stem, *codes])[1:]
                return dict(zip(("res2", "res3", "res4", "res5"), maps))

        fpn = teacher.detector.backbone
        original, fpn.bottom_up = fpn.bottom_up, Decoded()
        try:
            expected = fpn(images)
        finally:
            fpn.bottom_up = original
        got = student.backbone(images)
    _assert_pyramid(got, 32)
    for name in STRIDES:
        assert torch.allclose(got[name], expected[name], atol=1e-4, rtol=1e-3), name


def test_written_config_and_weights_load_the_trained_blocks(stitched):
    tmp, stages = stitched["tmp"], stitched["stages"]
    overrides = stitched["overrides"]
    weights = tmp / "student_init.pth"
    write_weights(weights, stitched["state"])
    write_config(tmp / "student.yaml", str(STUDENT), {**overrides, "MODEL": {**overrides["MODEL"], "WEIGHTS": str(weights)}})
    cfg = load_config(str(tmp / "student.yaml"), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.BACKBONE.NAME == "build_compact_fpn_backbone" and cfg.MODEL.WEIGHTS == str(weights)
    model = build_model(cfg)
    load_detector_weights(model, cfg.MODEL.WEIGHTS)  # strict: raises on any missing or extra key
    loaded = model.state_dict()
    for name, stage in zip(("res2", "res3", "res4", "res5"), stages):
        for key, value in stage.state_dict().items():
            assert torch.equal(loaded[f"backbone.bottom_up.{name}.{key}"], value), (name, key)
    stem = stitched["teacher"].detector.state_dict()
    assert all(torch.equal(loaded[k], stem[k]) for k in loaded if k.startswith("backbone.bottom_up.stem."))


def test_mobilenetv2_fpn_levels():
    cfg = _student_cfg(**{"MODEL.BACKBONE.NAME": "build_mobilenetv2_fpn_backbone", "MODEL.MOBILENET.NORM": "GN"})
    backbone = build_backbone(cfg)
    shapes = backbone.bottom_up.output_shape()
    assert [(shapes[f].channels, shapes[f].stride) for f in ("res2", "res3", "res4", "res5")] == \
        [(24, 4), (32, 8), (96, 16), (320, 32)]
    _assert_pyramid(backbone(torch.randn(2, 3, 64, 96)), 32)
    assert {k: v.stride for k, v in backbone.output_shape().items()} == STRIDES


def test_mobilenetv2_takes_torchvision_weights(tmp_path):
    torch.manual_seed(0)
    source = mobilenet_v2().state_dict()
    torch.save(source, tmp_path / "mobilenet_v2.pth")
    cfg = _student_cfg(**{"MODEL.BACKBONE.NAME": "build_mobilenetv2_fpn_backbone", "MODEL.MOBILENET.NORM": "FrozenBN",
                          "MODEL.WEIGHTS": str(tmp_path / "mobilenet_v2.pth")})
    model = build_model(cfg)
    DistillCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # a backbone-only file: the heads stay as they are
    state = model.state_dict()
    assert torch.equal(state["backbone.bottom_up.stem.layer.0.0.weight"], source["features.0.0.weight"])
    assert torch.equal(state["backbone.bottom_up.res5.3.layer.conv.2.weight"], source["features.17.conv.2.weight"])
    assert torch.equal(state["backbone.bottom_up.res2.1.layer.conv.0.1.running_var"], source["features.3.conv.0.1.running_var"])


def _check_hkd_losses(losses):
    assert {"loss_pd", "loss_rd", "loss_ld"} <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses


def test_hkd_trains_the_compact_student(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.BACKBONE.NAME": "build_compact_fpn_backbone",
                                             "MODEL.COMPACT.BLOCKS": ["separable", "inverted_residual", "basic", "bottleneck"],
                                             "MODEL.COMPACT.WIDTHS": [16, 32, 32, 32], "MODEL.COMPACT.DEPTHS": [1, 1, 1, 1]})
    model = train_iterations(cfg, check=_check_hkd_losses)
    assert "backbone.bottom_up.res3.0.layer.conv.0.0.weight" in model.state_dict()


def test_hkd_trains_the_mobilenetv2_student(tmp_path):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / "synthetic" / "hkd_R50_to_MobileNetV2.yaml"))
    cfg = _merge(cfg, {**TINY, **write_teacher(tmp_path)})
    assert cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_fpn_backbone" and cfg.MODEL.META_ARCHITECTURE == "Distiller"
    train_iterations(cfg, check=_check_hkd_losses)

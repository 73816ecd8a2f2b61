"""Backbone pre-training on generated textures: the data, the checkpoint MODEL.WEIGHTS loads, bad input."""
import pickle

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from hkd_d2.checkpoint import HKDCheckpointer, WeightsMismatchError
from hkd_d2.data.textures import CLASSES, FAMILIES, MAX_CLASSES, TextureConfig, class_name, generate_textures
from hkd_d2.engine.setup import load_config
from hkd_d2.modeling.classifier import BackboneClassifier
from hkd_d2.tools import pretrain

from ..conftest import CONFIGS
from ..hkd_helpers import TINY, write_teacher

BOTTOM_UP = "backbone.bottom_up."
SYNTHETIC, PRETRAINED = CONFIGS / "synthetic", CONFIGS / "synthetic" / "pretrained"
# A run of a few iterations on tiny images: enough to change every weight from its initialisation.
TINY_RUN = ["--classes", "4", "--image-size", "32", "--num-train", "8", "--num-val", "4", "--iters", "2",
            "--batch", "4", "--log-period", "1"]


def _pretrain(tmp_path, *args):
    out = tmp_path / "weights" / "R.pkl"
    summary = pretrain.main([*args, "--out", str(out), *TINY_RUN])
    return out, summary


def _loaded_bottom_up(config_file, weights, opts=(), checkpointer=DetectionCheckpointer):
    """(model, incompatible keys) after loading ``weights`` as MODEL.WEIGHTS into the detector of ``config_file``."""
    cfg = load_config(str(config_file), ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    loader = checkpointer(model)
    incompatible = loader._load_model(loader._load_file(str(weights)))  # what .load() logs, as data
    return model, incompatible


@pytest.mark.parametrize("args, config, depth, norm", [
    # defaults: the pre-trained setting's student / teacher (FrozenBN, trained as BN)
    (["--depth", "18"], PRETRAINED / "student_R18_FPN_pretrained.yaml", 18, "BN"),
    (["--depth", "50"], PRETRAINED / "teacher_R50_FPN_pretrained.yaml", 50, "BN"),
    # the from-scratch synthetic configs (GroupNorm)
    (["--config-file", str(SYNTHETIC / "student_R18_FPN.yaml")], SYNTHETIC / "student_R18_FPN.yaml", 18, "GN"),
    (["--config-file", str(SYNTHETIC / "teacher_R50_FPN.yaml")], SYNTHETIC / "teacher_R50_FPN.yaml", 50, "GN"),
])
def test_pretrained_backbone_loads_into_the_synthetic_detector(tmp_path, args, config, depth, norm):
    out, summary = _pretrain(tmp_path, *args)
    assert summary["depth"] == depth and summary["norm"] == norm and 0 <= summary["val_accuracy"] <= 1
    assert (out.with_suffix(".json")).is_file()
    with open(out, "rb") as f:
        saved = pickle.load(f)
    assert saved["matching_heuristics"] is True and saved["__author__"] == pretrain.AUTHOR
    assert saved["pretraining"]["iters"] == 2 and "stem.conv1.weight" in saved["model"]
    assert all(isinstance(v, np.ndarray) for v in saved["model"].values())

    model, incompatible = _loaded_bottom_up(config, out)
    state = model.state_dict()
    bottom_up = {k for k in state if k.startswith(BOTTOM_UP)}
    assert not [k for k in incompatible.missing_keys if k.startswith(BOTTOM_UP)]
    assert any(k.startswith("backbone.fpn_") for k in incompatible.missing_keys)  # FPN and heads: not pre-trained
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    assert {BOTTOM_UP + k for k in saved["model"]} == bottom_up
    for name, value in saved["model"].items():
        assert torch.equal(state[BOTTOM_UP + name], torch.from_numpy(value)), name


def test_the_training_loader_accepts_it_and_refuses_another_depth_or_norm(tmp_path):
    out, _ = _pretrain(tmp_path, "--depth", "18")
    _loaded_bottom_up(PRETRAINED / "t3_1_baseline_pretrained.yaml", out, checkpointer=HKDCheckpointer)
    with pytest.raises(WeightsMismatchError, match="missing in the file"):
        _loaded_bottom_up(PRETRAINED / "teacher_R50_FPN_pretrained.yaml", out, checkpointer=HKDCheckpointer)
    # BatchNorm statistics have no place in a GroupNorm ResNet
    with pytest.raises(WeightsMismatchError, match="unexpected in the file: .*running_mean"):
        _loaded_bottom_up(SYNTHETIC / "student_R18_FPN.yaml", out, checkpointer=HKDCheckpointer)


def test_real_recipe_frozen_bn_is_trained_as_bn_and_loads_as_frozen_bn(tmp_path):
    config = CONFIGS / "caltech" / "teacher_R50_FPN.yaml"
    out, summary = _pretrain(tmp_path, "--config-file", str(config), "--depth", "50")
    assert summary["norm"] == "BN" and summary["stride_in_1x1"] is True
    with open(out, "rb") as f:
        saved = pickle.load(f)["model"]
    assert "stem.conv1.norm.running_var" in saved and not any(k.endswith("num_batches_tracked") for k in saved)
    model, incompatible = _loaded_bottom_up(config, out, checkpointer=HKDCheckpointer)
    assert type(model.backbone.bottom_up.stem.conv1.norm).__name__ == "FrozenBatchNorm2d"
    state = model.state_dict()
    for name in ("stem.conv1.norm.running_mean", "res5.2.conv3.norm.weight", "res3.0.shortcut.weight"):
        assert torch.equal(state[BOTTOM_UP + name], torch.from_numpy(saved[name])), name


def test_pretrained_student_of_a_distillation_row_loads(tmp_path):
    out, _ = _pretrain(tmp_path, "--depth", "18")
    teacher = write_teacher(tmp_path, depth=18)
    opts = [x for kv in {**TINY, **teacher}.items() for x in kv]
    model, incompatible = _loaded_bottom_up(PRETRAINED / "t3_7_pd_rd_ld_pretrained.yaml", out,
                                            [str(o) for o in opts], checkpointer=HKDCheckpointer)
    assert not [k for k in incompatible.missing_keys if k.startswith(BOTTOM_UP)]
    assert not any(k.startswith("teacher") for k in model.state_dict())


@pytest.mark.parametrize("depth, block, last, blocks", [(18, BasicBlock, "conv2", 8), (50, BottleneckBlock, "conv3", 16)])
def test_residual_branches_start_at_zero(depth, block, last, blocks):
    model = BackboneClassifier(pretrain.pretraining_config(None, depth), num_classes=3)
    found = [m for m in model.backbone.modules() if isinstance(m, block)]
    assert len(found) == blocks
    assert all(not getattr(m, last).norm.weight.any() and m.conv1.norm.weight.all() for m in found)
    assert type(found[0].conv1.norm).__name__ == "BatchNorm2d"  # the configs' FrozenBN, trained
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_textures_are_deterministic_per_seed_and_balanced():
    cfg = TextureConfig(num_classes=12, size=32, seed=3)
    images, labels = generate_textures(cfg, "train", 24)
    again, labels_again = generate_textures(cfg, "train", 24)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=12).tolist() == [2] * 12
    other_seed, _ = generate_textures(TextureConfig(num_classes=12, size=32, seed=4), "train", 24)
    val, _ = generate_textures(cfg, "val", 24)
    assert not np.array_equal(images, other_seed) and not np.array_equal(images, val)
    tail, _ = generate_textures(cfg, "train", 4, first=20)
    assert np.array_equal(tail, images[20:])
    with pytest.raises(ValueError, match="split must be one of"):
        generate_textures(cfg, "test", 1)


def test_classes_cover_every_family_at_both_scales_first():
    assert MAX_CLASSES == sum(2 * len(orientations) for _, orientations in FAMILIES.values()) == 32
    names = [class_name(k) for k in range(MAX_CLASSES)]
    assert len(set(names)) == MAX_CLASSES and names[0] == "stripes 0deg fine" and "waves 135deg coarse" in names
    assert {c[0] for c in CLASSES[:2 * len(FAMILIES)]} == set(FAMILIES)


def test_pretraining_data_and_initialisation_repeat_with_the_seed(tmp_path):
    first = pretrain.main(["--depth", "18", "--out", str(tmp_path / "a.pkl"), *TINY_RUN])
    second = pretrain.main(["--depth", "18", "--out", str(tmp_path / "b.pkl"), *TINY_RUN])
    assert first["final_train_loss"] == second["final_train_loss"]
    with open(tmp_path / "a.pkl", "rb") as f, open(tmp_path / "b.pkl", "rb") as g:
        a, b = pickle.load(f)["model"], pickle.load(g)["model"]
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("argv, error, match", [
    (["--depth", "42"], ValueError, "--depth 42: Detectron2's ResNets have depth 18, 34, 50"),
    ([], ValueError, "Give --depth"),
    (["--depth", "18", "--classes", str(MAX_CLASSES + 1)], ValueError, "num_classes must be in 2"),
    (["--depth", "18", "--iters", "0"], ValueError, "--iters must be >= 1"),
    (["--depth", "18", "--lr", "nan"], ValueError, "--lr must be a positive number"),
    (["--depth", "50", "--config-file", str(SYNTHETIC / "student_R18_FPN.yaml")], ValueError,
     "--depth 50 but .*student_R18_FPN.yaml has MODEL.RESNETS.DEPTH 18"),
    (["--config-file", "no/such.yaml"], FileNotFoundError, "Config file not found: no/such.yaml"),
])
def test_bad_arguments_fail_before_training(tmp_path, argv, error, match):
    with pytest.raises(error, match=match):
        pretrain.main([*argv, "--out", str(tmp_path / "R.pkl")])
    assert not (tmp_path / "R.pkl").exists()


def test_bad_output_paths_fail_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot make its folder"):
        pretrain.check_output(tmp_path / "file" / "sub" / "R-18.pkl", overwrite=False)
    with pytest.raises(ValueError, match=r"must end in \.pkl"):
        pretrain.check_output(tmp_path / "R-18.pth", overwrite=False)
    existing = tmp_path / "R-18.pkl"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        pretrain.main(["--depth", "18", "--out", str(existing), *TINY_RUN])
    assert existing.read_bytes() == b"keep"
    pretrain.check_output(tmp_path / "new" / "deeper" / "R-18.pkl", overwrite=False)
    assert (tmp_path / "new" / "deeper").is_dir()

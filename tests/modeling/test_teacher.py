"""The frozen teacher: built from its own config + weights, frozen, clear errors on bad input."""
import pytest
import torch

from hkd_d2.checkpoint import WeightsMismatchError
from hkd_d2.modeling.teacher import FrozenTeacher, build_teacher, resolve_path

from ..hkd_helpers import batch, hkd_cfg, write_teacher


def test_teacher_loads_weights_and_is_frozen(tmp_path):
    files = write_teacher(tmp_path)
    teacher = build_teacher(hkd_cfg(files))
    assert isinstance(teacher, FrozenTeacher)
    saved = torch.load(files["MODEL.TEACHER.WEIGHTS"])["model"]
    state = teacher.detector.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())


def test_teacher_features_have_no_grad_and_own_normalisation(tmp_path):
    files = write_teacher(tmp_path, **{"MODEL.PIXEL_MEAN": [10.0, 20.0, 30.0]})
    teacher = build_teacher(hkd_cfg(files))
    images, features = teacher.features(batch())
    assert set(features) == {"p2", "p3", "p4", "p5", "p6"}
    assert not any(f.requires_grad for f in features.values())
    expected = batch()[0]["image"].float() - torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)
    assert torch.equal(images.tensor[0, :, :64, :96], expected)


def test_missing_config_file_is_named(tmp_path):
    files = write_teacher(tmp_path)
    files["MODEL.TEACHER.CONFIG_FILE"] = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_teacher(hkd_cfg(files))


def test_missing_weights_file_is_named(tmp_path):
    files = write_teacher(tmp_path)
    files["MODEL.TEACHER.WEIGHTS"] = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_teacher(hkd_cfg(files))


def test_mismatched_weights_list_keys(tmp_path):
    r18 = write_teacher(tmp_path, depth=18)
    r50 = write_teacher(tmp_path, depth=50)
    files = {**r50, "MODEL.TEACHER.WEIGHTS": r18["MODEL.TEACHER.WEIGHTS"]}
    with pytest.raises(WeightsMismatchError, match="teacher_R18.pth") as err:
        build_teacher(hkd_cfg(files))
    assert "backbone.bottom_up.res2.0.conv3.weight" in str(err.value)


def test_teacher_without_pool_and_predict_is_refused(tmp_path):
    files = write_teacher(tmp_path, **{"MODEL.ROI_HEADS.NAME": "StandardROIHeads"})
    with pytest.raises(TypeError, match="pool_and_predict"):
        build_teacher(hkd_cfg(files))


def test_relative_paths_are_taken_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="MODEL.TEACHER.CONFIG_FILE 'configs/synthetic/teacher_R50_FPN.yaml'"):
        resolve_path("configs/synthetic/teacher_R50_FPN.yaml", "MODEL.TEACHER.CONFIG_FILE")
    (tmp_path / "configs" / "synthetic").mkdir(parents=True)
    local = tmp_path / "configs" / "synthetic" / "teacher_R50_FPN.yaml"
    local.write_text("")
    assert resolve_path("configs/synthetic/teacher_R50_FPN.yaml", "x") == str(local.resolve())
    with pytest.raises(FileNotFoundError, match="MODEL.TEACHER.WEIGHTS 'out/none.pth'"):
        resolve_path("out/none.pth", "MODEL.TEACHER.WEIGHTS")

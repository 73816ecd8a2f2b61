"""Weight loading and saving: torchvision ResNet conversion, strict key checks, damaged files
named, atomic saves (a kill or a full disk mid-write), resume fallback."""
import errno
import io
import logging
import os
from pathlib import Path

import pytest
import torch
import torchvision
from detectron2.modeling import build_model

from hkd_d2.atomic import DiskFullError
from hkd_d2.checkpoint import (
    CONFIG_KEY,
    CheckpointFileError,
    DistillCheckpointer,
    ResumeError,
    WeightsMismatchError,
    check_checkpoint_file,
    convert_torchvision_resnet,
    load_detector_weights,
)
from hkd_d2.engine.setup import load_config

from ..conftest import CONFIGS


def standard_rcnn(depth: int, norm: str = "FrozenBN"):
    """A plain GeneralizedRCNN (Detectron2's own heads) with an R18/R50 FPN backbone."""
    cfg = load_config(
        str(CONFIGS / "synthetic" / ("student_R18_FPN.yaml" if depth == 18 else "teacher_R50_FPN.yaml")),
        [
            "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", norm,
            "MODEL.PROPOSAL_GENERATOR.NAME", "RPN", "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
            "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        ],
    )
    return build_model(cfg)


@pytest.mark.parametrize("depth,arch,norm", [(18, "resnet18", "BN"), (50, "resnet50", "FrozenBN")])
def test_torchvision_resnet_matches_every_backbone_key(tmp_path, depth, arch, norm):
    tv = getattr(torchvision.models, arch)(weights=None)
    torch.manual_seed(0)
    for p in tv.parameters():
        p.data.normal_()
    path = tmp_path / f"{arch}.pth"
    torch.save(tv.state_dict(), path)

    model = standard_rcnn(depth, norm)
    backbone_keys = {
        k for k in model.state_dict()
        if k.startswith("backbone.bottom_up.") and not k.endswith("num_batches_tracked")
    }
    converted = convert_torchvision_resnet(tv.state_dict())
    assert set(converted) == backbone_keys  # every key matched, none left over

    DistillCheckpointer(model).load(str(path))
    state = model.state_dict()
    assert torch.equal(state["backbone.bottom_up.stem.conv1.weight"], tv.conv1.weight)
    assert torch.equal(state["backbone.bottom_up.res2.0.conv1.norm.running_var"], tv.layer1[0].bn1.running_var)
    assert torch.equal(state["backbone.bottom_up.res5.0.shortcut.weight"], tv.layer4[0].downsample[0].weight)


def test_missing_weights_file_names_it(tmp_path):
    model = standard_rcnn(18)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DistillCheckpointer(model).load(str(missing))


def test_weights_of_another_architecture_list_keys(tmp_path):
    r50 = standard_rcnn(50)
    path = tmp_path / "r50_detector.pth"
    torch.save({"model": r50.state_dict()}, path)
    with pytest.raises(WeightsMismatchError) as err:
        load_detector_weights(standard_rcnn(18), str(path))
    message = str(err.value)
    assert "r50_detector.pth" in message
    assert "unexpected" in message and "res2.0.conv3.weight" in message
    assert err.value.shapes  # R50 and R18 share names with other shapes


def test_same_architecture_round_trip(tmp_path):
    a, b = standard_rcnn(18), standard_rcnn(18)
    path = tmp_path / "r18.pth"
    torch.save({"model": a.state_dict()}, path)
    load_detector_weights(b, str(path))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_detector_file_missing_head_keys_is_refused(tmp_path):
    model = standard_rcnn(18)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_heads.box_head")}
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsMismatchError, match="missing") as err:
        load_detector_weights(standard_rcnn(18), str(path))
    assert all(k.startswith("roi_heads.box_head") for k in err.value.missing)


def test_whole_detector_loader_refuses_backbone_only_file(tmp_path):
    """A teacher must be loaded whole: ImageNet weights would leave its heads random."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="resnet18.pth") as err:
        load_detector_weights(standard_rcnn(18), str(path))
    assert any(k.startswith("roi_heads.") for k in err.value.missing)


# --- damaged files, atomic saves, resume fallback ----------------------------------------------

def _detector_file(tmp_path, name="good.pth"):
    path = tmp_path / name
    torch.save({"model": standard_rcnn(18).state_dict()}, path)
    return path


def _damaged(kind: str, good: Path, path: Path) -> Path:
    data = good.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"<html>not weights</html>" * 50,
         "text": b"model_0000029.pth"}[kind]
    )
    return path


@pytest.mark.parametrize("kind,problem", [
    ("truncated", "truncated or damaged PyTorch archive"),
    ("empty", r"empty \(0 bytes"),
    ("garbage", "not a PyTorch checkpoint or pickle"),
    ("text", "not a PyTorch checkpoint or pickle"),
])
@pytest.mark.parametrize("loader", ["MODEL.WEIGHTS", "MODEL.TEACHER.WEIGHTS"])
def test_damaged_weights_file_is_named(tmp_path, kind, problem, loader):
    path = _damaged(kind, _detector_file(tmp_path), tmp_path / f"{kind}.pth")
    model = standard_rcnn(18)
    load = DistillCheckpointer(model).load if loader == "MODEL.WEIGHTS" else (lambda p: load_detector_weights(model, p))
    with pytest.raises(CheckpointFileError, match=problem) as err:
        load(str(path))
    assert err.value.path == str(path) and f"{kind}.pth" in str(err.value)


@pytest.mark.parametrize("content,problem", [
    ([1, 2, 3], "it holds a list"),
    ({"model": {"a": "not a tensor"}}, "entries that are not tensors: a"),
    (torch.zeros(3), "does not hold a checkpoint"),
])
def test_foreign_torch_file_is_named(tmp_path, content, problem):
    path = tmp_path / "foreign.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointFileError, match=problem):
        DistillCheckpointer(standard_rcnn(18)).load(str(path))
    with pytest.raises(CheckpointFileError, match="foreign.pth"):
        check_checkpoint_file(str(path))


def _saving_checkpointer(tmp_path, **kwargs):
    model = standard_rcnn(18)
    return model, DistillCheckpointer(model, str(tmp_path), save_to_disk=True, **kwargs)


def test_save_is_atomic_and_keeps_umask_permissions(tmp_path):
    model, ckpt = _saving_checkpointer(tmp_path, run_config="SEED: 7\n")
    ckpt.save("model_0000001", iteration=1)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    data = check_checkpoint_file(str(tmp_path / "model_0000001.pth"))
    assert data["iteration"] == 1 and data[CONFIG_KEY] == "SEED: 7\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "model_0000001.pth").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]


class _Killed(BaseException):
    """Stands for SIGKILL arriving in the middle of a write (nothing after it runs)."""


def _interrupted_save(exc):
    """A torch.save that writes half the bytes and then raises ``exc``."""
    real_save = torch.save

    def save(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise exc

    return save


def _enospc_masked():
    """What torch.save raises on a full disk: its zip writer's RuntimeError over the OSError."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790")
        except RuntimeError as e:
            return e


@pytest.mark.parametrize("exc", [_Killed(), OSError(errno.ENOSPC, "No space left on device"), _enospc_masked()])
def test_interrupted_save_leaves_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch, exc):
    model, ckpt = _saving_checkpointer(tmp_path)
    ckpt.save("model_0000004", iteration=4)
    ckpt.save("model_final", iteration=4)
    before = (tmp_path / "model_final.pth").read_bytes()
    for p in model.parameters():
        p.data.add_(1.0)
    monkeypatch.setattr(torch, "save", _interrupted_save(exc))
    expected = _Killed if isinstance(exc, _Killed) else DiskFullError
    with pytest.raises(expected) as err:
        ckpt.save("model_final", iteration=9)
    assert (tmp_path / "model_final.pth").read_bytes() == before  # old file untouched
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000004.pth", "model_final.pth"]
    if expected is DiskFullError:
        message = str(err.value)
        assert "No space left on device writing model_final.pth" in message
        assert f"in folder {tmp_path}" in message and "MiB free" in message
        assert f"previous checkpoint {tmp_path / 'model_final.pth'} is intact" in message
        assert err.value.errno == errno.ENOSPC


def test_resume_falls_back_to_newest_intact_checkpoint(tmp_path, caplog):
    model, ckpt = _saving_checkpointer(tmp_path)
    marker = next(model.parameters())
    for it in (2, 5):
        marker.data.fill_(it)
        ckpt.save(f"model_{it:07d}", iteration=it)
        os.utime(tmp_path / f"model_{it:07d}.pth", (it, it))  # mtime order = save order
    ckpt.save("model_final", iteration=5)
    _damaged("truncated", tmp_path / "model_final.pth", tmp_path / "model_final.pth")
    _damaged("garbage", tmp_path / "model_final.pth", tmp_path / "model_0000005.pth")
    marker.data.fill_(-1)
    logger = logging.getLogger("hkd_d2.checkpoint")
    logger.addHandler(caplog.handler)
    try:
        extra = ckpt.resume_or_load("", resume=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert extra["iteration"] == 2 and ckpt.resumed_from == str(tmp_path / "model_0000002.pth")
    assert torch.all(marker == 2)
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "Not resuming from " + str(tmp_path / "model_final.pth") in warnings and "truncated" in warnings
    assert "model_0000005.pth" in warnings and "Resumed from" in warnings


def test_resume_without_intact_checkpoint_stops_clearly(tmp_path):
    model, ckpt = _saving_checkpointer(tmp_path)
    ckpt.save("model_final", iteration=1)
    _damaged("empty", tmp_path / "model_final.pth", tmp_path / "model_final.pth")
    with pytest.raises(ResumeError, match=r"no intact checkpoint in .*model_final.pth.*empty"):
        ckpt.resume_or_load("", resume=True)


def test_old_checkpointer_name_is_the_same_class():
    from hkd_d2.checkpoint import HKDCheckpointer

    assert HKDCheckpointer is DistillCheckpointer

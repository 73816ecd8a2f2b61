"""Weight loading: torchvision ResNet conversion, strict key checks, clear errors."""
import pytest
import torch
import torchvision
from detectron2.modeling import build_model

from hkd_d2.checkpoint import (
    HKDCheckpointer,
    WeightsMismatchError,
    convert_torchvision_resnet,
    load_detector_weights,
)
from hkd_d2.engine.setup import load_config

from .conftest import CONFIGS


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

    HKDCheckpointer(model).load(str(path))
    state = model.state_dict()
    assert torch.equal(state["backbone.bottom_up.stem.conv1.weight"], tv.conv1.weight)
    assert torch.equal(state["backbone.bottom_up.res2.0.conv1.norm.running_var"], tv.layer1[0].bn1.running_var)
    assert torch.equal(state["backbone.bottom_up.res5.0.shortcut.weight"], tv.layer4[0].downsample[0].weight)


def test_missing_weights_file_names_it(tmp_path):
    model = standard_rcnn(18)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        HKDCheckpointer(model).load(str(missing))


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

"""Online distillation (MODEL.TEACHER.ONLINE): the teacher trains in the student's run on its own
detection losses; distillation never sends it a gradient; it is a submodule (state_dict, optimizer)."""
import math
from typing import Callable, Dict

import pytest
import torch
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from hkd_d2.checkpoint import DistillCheckpointer, save_backbone_pkl
from hkd_d2.engine import load_config
from hkd_d2.modeling import distiller as distiller_module
from hkd_d2.modeling.teacher import FrozenTeacher, OnlineTeacher

from ..hkd_helpers import TINY, _merge, batch, build_hkd, hkd_cfg, student_keys, train_iterations, write_teacher
from .test_distiller import _ddp_worker
from ..conftest import CONFIGS

ONLINE_CONFIG = CONFIGS / "synthetic" / "online" / "online_teacher_hkd.yaml"
DETECTION_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
TEACHER_LOSSES = {f"teacher/{k}" for k in DETECTION_LOSSES}
DISTILL_LOSSES = {"loss_pd", "loss_rd", "loss_ld"}


def online_cfg(tmp_path, start_from_file: bool = False, **overrides):
    """The tiny synthetic HKD config with an online R18 teacher (from scratch unless ``start_from_file``)."""
    files = write_teacher(tmp_path, **{"MODEL.FPN.OUT_CHANNELS": 64})
    if not start_from_file:
        files["MODEL.TEACHER.WEIGHTS"] = ""
    return hkd_cfg(files, **{"MODEL.TEACHER.ONLINE": True, **overrides})


def _gradients(model, chosen: Callable[[str], bool]) -> Dict[str, torch.Tensor]:
    """Every parameter's gradient (None when it got none) of the sum of the losses ``chosen``
    picks by name, on the same batch and random stream each time."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    with EventStorage():
        losses = model(batch())
    sum(v for k, v in losses.items() if chosen(k)).backward()
    return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


def test_online_teacher_is_a_trained_submodule_without_weights(tmp_path):
    cfg = online_cfg(tmp_path)
    assert cfg.MODEL.TEACHER.WEIGHTS == ""
    model = build_hkd(cfg)
    assert isinstance(model.teacher, OnlineTeacher) and model.teacher.training
    teacher_keys = {f"teacher.detector.{k}" for k in model.teacher.detector.state_dict()}
    adapter_keys = {k for k in model.state_dict() if k.startswith("distill_terms.")}
    assert teacher_keys and adapter_keys
    assert set(model.state_dict()) == student_keys(cfg) | adapter_keys | teacher_keys
    optimizer = build_optimizer(cfg, model)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.teacher.parameters()} <= optimized
    model.eval()
    assert not model.teacher.training


def test_default_teacher_stays_frozen(tmp_path):
    model = build_hkd(hkd_cfg(write_teacher(tmp_path)))
    assert isinstance(model.teacher, FrozenTeacher)
    assert not any(k.startswith("teacher.") for k in model.state_dict())


def test_losses_by_origin_and_teacher_scalars_in_event_storage(tmp_path):
    model = build_hkd(online_cfg(tmp_path))
    model.train()
    with EventStorage() as storage:
        losses = model(batch())
        scalars = set(storage.latest())
    assert set(losses) == DETECTION_LOSSES | DISTILL_LOSSES | TEACHER_LOSSES
    assert all(math.isfinite(v.item()) and v.item() > 0 for k, v in losses.items() if k in TEACHER_LOSSES)
    last = model.last_losses
    assert set(last.teacher) == TEACHER_LOSSES and set(last.detection) == DETECTION_LOSSES
    assert set(last.distillation) == DISTILL_LOSSES
    # The teacher's own statistics are scoped, the student's keep their names.
    assert {"teacher/rpn/num_pos_anchors", "teacher/fast_rcnn/cls_accuracy", "rpn/num_pos_anchors",
            "fast_rcnn/cls_accuracy"} <= scalars


def test_teacher_gradient_is_its_detection_loss_alone(tmp_path):
    model = build_hkd(online_cfg(tmp_path))
    model.train()
    every = _gradients(model, lambda name: True)
    teacher_only = _gradients(model, lambda name: name.startswith("teacher/"))
    student_only = _gradients(model, lambda name: not name.startswith("teacher/"))
    distillation_only = _gradients(model, lambda name: name in DISTILL_LOSSES)
    teacher = [k for k in every if k.startswith("teacher.")]
    student = [k for k in every if not k.startswith("teacher.")]
    assert teacher and student
    for k in teacher:
        assert every[k] is not None and torch.equal(every[k], teacher_only[k]), k
        assert student_only[k] is None and distillation_only[k] is None, k
    for k in student:
        assert teacher_only[k] is None, k
        assert (every[k] is None and student_only[k] is None) or torch.equal(every[k], student_only[k]), k
    assert any(every[k].abs().sum() > 0 for k in teacher)
    assert every["distill_terms.0.adapters.p2.weight"].abs().sum() > 0


def test_one_step_changes_student_and_teacher(tmp_path):
    cfg = online_cfg(tmp_path)
    before = {k: v.clone() for k, v in build_hkd(cfg).state_dict().items()}
    after = train_iterations(cfg, steps=1).state_dict()
    changed = {k for k, v in after.items() if v.dtype.is_floating_point and not torch.equal(before[k], v)}
    for prefix in ("backbone.bottom_up.", "roi_heads.box_predictor.", "teacher.detector.backbone.bottom_up.",
                   "teacher.detector.roi_heads.box_predictor.", "teacher.detector.proposal_generator."):
        assert any(k.startswith(prefix) for k in changed), prefix


def test_teacher_starts_from_the_given_file(tmp_path):
    cfg = online_cfg(tmp_path, start_from_file=True)
    model = build_hkd(cfg, seed=3)
    saved = torch.load(cfg.MODEL.TEACHER.WEIGHTS)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.teacher.detector.state_dict().items() if k in saved)


def test_name_matched_backbone_loads_into_the_student_only(tmp_path):
    """An ImageNet-style .pkl (names matched by heuristics) fits student and teacher backbones alike
    (same depth here): it must load into the student, not be ambiguous, and leave the teacher as it is."""
    model = build_hkd(online_cfg(tmp_path))
    source = build_hkd(online_cfg(tmp_path), seed=9).backbone.bottom_up
    pkl = tmp_path / "backbone.pkl"
    save_backbone_pkl(str(pkl), source, author="test")
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    DistillCheckpointer(model).load(str(pkl))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.backbone.bottom_up.state_dict().items()
               if not k.endswith("num_batches_tracked"))
    assert all(torch.equal(v, teacher_before[k]) for k, v in model.teacher.state_dict().items())


def test_compatibility_check_runs_for_an_online_teacher(tmp_path, monkeypatch):
    calls = []
    check = distiller_module.check_teacher
    monkeypatch.setattr(distiller_module, "check_teacher", lambda *a: calls.append(a) or check(*a))
    model = build_hkd(online_cfg(tmp_path))
    assert len(calls) == 1 and calls[0][1] is model.teacher.cfg


def test_inference_runs_the_student_alone(tmp_path, monkeypatch):
    model = build_hkd(online_cfg(tmp_path))
    monkeypatch.setattr(OnlineTeacher, "step", lambda *a: pytest.fail("the teacher ran at inference"))
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"]} for b in batch()])
    assert len(outputs) == 2 and outputs[0]["instances"].has("scores")


def test_shipped_synthetic_config_trains_two_iterations():
    cfg = _merge(load_config(str(ONLINE_CONFIG)), TINY)
    assert cfg.MODEL.TEACHER.ONLINE and cfg.MODEL.TEACHER.WEIGHTS == ""

    def check(losses):
        assert DETECTION_LOSSES | DISTILL_LOSSES | TEACHER_LOSSES <= set(losses)
        assert all(math.isfinite(v.item()) for v in losses.values()), losses

    model = train_iterations(cfg, steps=2, check=check)
    assert model.teacher.detector.backbone.bottom_up.res5[0].conv1.weight.shape[0] == 512  # the R50 teacher


@pytest.mark.slow
def test_ddp_two_processes_keep_students_and_teachers_identical(tmp_path):
    from detectron2.engine import launch

    cfg = online_cfg(tmp_path, **{"MODEL.DISTILL.WARMUP_ITERS": 2})
    launch(_ddp_worker, 2, dist_url="auto", args=(cfg, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pth") for r in range(2)]
    assert set(ranks[0]) == set(ranks[1]) and any(k.startswith("teacher.") for k in ranks[0])
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    init = build_hkd(cfg, seed=0).state_dict()
    for name in ("backbone.fpn_output2.weight", "teacher.detector.backbone.fpn_output2.weight"):
        assert not torch.equal(init[name], ranks[0][name]), name

"""Distiller: teacher outside the module tree and frozen, shared RoIs, teacher work on demand,
losses by origin."""
from typing import Dict

import pytest
import torch
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from hkd_d2.modeling import Distiller, HKDDistiller
from hkd_d2.modeling.distill import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm
from hkd_d2.modeling.teacher import FrozenTeacher

from ..hkd_helpers import (CallCounter, batch, build_hkd, hkd_cfg, registered_term, student_keys, withhold_term,
                          write_teacher)

DISTILL_LOSSES = {"loss_pd", "loss_rd", "loss_ld"}
DETECTION_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}


@DISTILL_TERM_REGISTRY.register()
class _RPNProbe(DistillTerm):
    """Test-only term that asks for RPN outputs and records the context it was given."""

    CONFIG_NODE = "MODEL.DISTILL.RPN_PROBE"
    teacher_needs = frozenset({"rpn"})
    seen = []

    class Defaults:
        # Weight of the probe's loss.
        WEIGHT = 1.0

    def __init__(self, cfg, student_shapes, teacher_shapes):
        super().__init__(cfg)

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        _RPNProbe.seen.append(ctx)
        loss = sum((s - t).pow(2).mean() for s, t in zip(
            ctx.student.rpn.objectness_logits, ctx.teacher.rpn.objectness_logits))
        return {"loss_rpn_probe": loss}


withhold_term("_RPNProbe")


@pytest.fixture
def probe_keys():
    with registered_term(_RPNProbe):
        yield


def _train(model, steps: int, cfg):
    optimizer = build_optimizer(cfg, model)
    model.train()
    with EventStorage():
        for i in range(steps):
            losses = model(batch(seed=i))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    return optimizer


def test_teacher_outside_state_dict_parameters_and_optimizer(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path))
    model = build_hkd(cfg)
    assert isinstance(model.teacher, FrozenTeacher)
    assert set(model.state_dict()) == student_keys(cfg)
    assert "_teacher" not in dict(model.named_modules())
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    optimizer = build_optimizer(cfg, model)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert not teacher_ids & optimized


def test_teacher_bit_identical_after_training(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path))
    model = build_hkd(cfg)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, 3, cfg)
    teacher_after = model.teacher.state_dict()
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    assert not model.teacher.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(student_before[k], v)]
    assert any(k.startswith("backbone.") for k in changed)


def test_distillation_gradients_reach_student_only(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path, **{"MODEL.FPN.OUT_CHANNELS": 64}))
    model = build_hkd(cfg)
    model.train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == DETECTION_LOSSES | DISTILL_LOSSES
    sum(losses[k] for k in DISTILL_LOSSES).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = {k: p.grad for k, p in model.named_parameters()}
    for name in ("backbone.bottom_up.res3.0.conv1.weight", "backbone.fpn_output2.weight",
                 "roi_heads.box_predictor.cls_score.weight", "distill_terms.0.adapters.p2.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # The student's box regression and RPN heads are not distilled by PD/RD/LD.
    assert grads["roi_heads.box_predictor.bbox_pred.weight"] is None
    assert grads["proposal_generator.rpn_head.objectness_logits.weight"] is None


def test_same_weights_give_zero_distillation(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path, norm="FrozenBN", **{"MODEL.ROI_BOX_HEAD.POOLER_NAME": "PyRoIAlign"}),
                  norm="FrozenBN")
    model = build_hkd(cfg, seed=5)
    model.load_state_dict(model.teacher.detector.state_dict())
    model.train()
    with EventStorage():
        losses = model(batch())
    for name in DISTILL_LOSSES:
        assert losses[name].item() == 0.0, name
    assert losses["loss_cls"].item() > 0


def test_zero_weights_never_run_the_teacher(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(FrozenTeacher, "features", lambda self, x: calls.append(x))
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.PYRAMID.WEIGHT": 0.0,
                                               "MODEL.DISTILL.REGION.WEIGHT": 0.0,
                                               "MODEL.DISTILL.LOGIT.WEIGHT": 0.0})
    model = build_hkd(cfg)
    assert len(model.distill_terms) == 0 and model.teacher is None
    model.train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == DETECTION_LOSSES and calls == []


def test_zero_weight_term_is_not_built(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.PYRAMID.WEIGHT": 0.0})
    model = build_hkd(cfg)
    assert [type(t).__name__ for t in model.distill_terms] == ["RegionDistill", "LogitDistill"]
    backbone = CallCounter(model.teacher.detector.backbone)
    box_head = CallCounter(model.teacher.detector.roi_heads.box_head)
    model.train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == DETECTION_LOSSES | {"loss_rd", "loss_ld"}
    assert backbone.calls == 1 and box_head.calls == 1


def test_feature_term_never_runs_teacher_box_head(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.TERMS": ["PyramidDistill"]})
    model = build_hkd(cfg)
    backbone = CallCounter(model.teacher.detector.backbone)
    pooler = CallCounter(model.teacher.detector.roi_heads.box_pooler)
    box_head = CallCounter(model.teacher.detector.roi_heads.box_head)
    rpn_head = CallCounter(model.teacher.detector.proposal_generator.rpn_head)
    model.train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == DETECTION_LOSSES | {"loss_pd"}
    assert (backbone.calls, pooler.calls, box_head.calls, rpn_head.calls) == (1, 0, 0, 0)


def test_region_terms_use_the_students_sampled_rois(tmp_path, monkeypatch):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.TERMS": ["LogitDistill"]})
    model = build_hkd(cfg)
    seen = {}

    def spy(who, pool_and_predict):
        def wrapped(features, proposals):
            seen[who] = proposals
            return pool_and_predict(features, proposals)
        return wrapped

    monkeypatch.setattr(model.roi_heads, "pool_and_predict", spy("student", model.roi_heads.pool_and_predict))
    monkeypatch.setattr(model.teacher, "pool_and_predict", spy("teacher", model.teacher.pool_and_predict))
    model.train()
    with EventStorage():
        model(batch())
    assert seen["student"] is seen["teacher"]
    assert all(p.has("gt_classes") for p in seen["teacher"])


def test_rpn_outputs_on_student_anchors(tmp_path, probe_keys):
    _RPNProbe.seen.clear()
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.TERMS": ["_RPNProbe"]})
    model = build_hkd(cfg)
    model.train()
    with EventStorage():
        losses = model(batch())
    assert losses["loss_rpn_probe"].requires_grad
    ctx = _RPNProbe.seen[-1]
    assert "roi" not in ctx.teacher and "features" in ctx.teacher
    with pytest.raises(KeyError, match="'roi' in its teacher_needs"):
        ctx.teacher.roi
    s, t = ctx.student.rpn, ctx.teacher.rpn
    assert len(s.objectness_logits) == len(t.objectness_logits) == 5
    for so, to, sd, td, a in zip(s.objectness_logits, t.objectness_logits, s.anchor_deltas, t.anchor_deltas, s.anchors):
        assert so.shape == to.shape and sd.shape == td.shape
        assert so.requires_grad and not to.requires_grad
        assert len(a) == so.shape[1] * so.shape[2] * so.shape[3]
    assert t.anchors is s.anchors
    # The RPN's own sampled mini-batch: labels in {-1, 0, 1}, at most BATCH_SIZE_PER_IMAGE sampled.
    num_anchors = sum(len(a) for a in s.anchors)
    for labels, boxes in zip(s.gt_labels, s.gt_boxes):
        assert labels.shape == (num_anchors,) and boxes.shape == (num_anchors, 4)
        assert 0 < int((labels >= 0).sum()) <= cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE
        assert int((labels == 1).sum()) > 0 and int((labels == -1).sum()) > 0
    # Recorded through hooks that are gone after the step; no method of the RPN was replaced.
    rpn = model.proposal_generator
    assert rpn._recorded_targets is None and not rpn.rpn_head._forward_hooks and not rpn.anchor_generator._forward_hooks
    assert "label_and_sample_anchors" not in vars(rpn)


def test_teacher_with_other_anchors_or_box_weights_is_refused(tmp_path, probe_keys):
    for key, value in (("MODEL.ANCHOR_GENERATOR.SIZES", "[[20], [40], [80], [160], [320]]"),
                       ("MODEL.RPN.BBOX_REG_WEIGHTS", "(2.0, 2.0, 1.0, 1.0)")):
        files = write_teacher(tmp_path, **{key: value})
        with pytest.raises(ValueError, match="anchors"):
            build_hkd(hkd_cfg(files, **{"MODEL.DISTILL.TERMS": ["_RPNProbe"]}))
        build_hkd(hkd_cfg(files))  # HKD reads neither: accepted
    files = write_teacher(tmp_path, **{"MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": "(5.0, 5.0, 2.0, 2.0)"})
    with pytest.raises(ValueError, match="box deltas"):
        build_hkd(hkd_cfg(files, **{"MODEL.DISTILL.TERMS": ["Chen2017Distill"],
                                    "MODEL.DISTILL.CHEN2017.RPN": False}))


def test_eval_runs_only_the_student(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path))
    model = build_hkd(cfg)
    backbone = CallCounter(model.teacher.detector.backbone)
    model.eval()
    with torch.no_grad():
        outputs = model(batch())
    assert backbone.calls == 0
    assert len(outputs) == 2 and all("instances" in o for o in outputs)


def test_channel_adapters_are_trained_and_optional(tmp_path):
    files = write_teacher(tmp_path, **{"MODEL.FPN.OUT_CHANNELS": 64})
    cfg = hkd_cfg(files)
    model = build_hkd(cfg)
    adapters = {k for k in model.state_dict() if k.startswith("distill_terms.")}
    assert adapters == {f"distill_terms.0.adapters.p{l}.{p}" for l in range(2, 6) for p in ("weight", "bias")} | {
        "distill_terms.1.adapter.weight", "distill_terms.1.adapter.bias"}
    assert model.state_dict()["distill_terms.1.adapter.weight"].shape == (64, 32, 1, 1)
    with pytest.raises(ValueError, match="ADAPT_CHANNELS"):
        build_hkd(hkd_cfg(files, **{"MODEL.DISTILL.ADAPT_CHANNELS": False}))


def test_to_moves_the_teacher(tmp_path):
    model = build_hkd(hkd_cfg(write_teacher(tmp_path)))
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.teacher.parameters())


def test_schedule_multiplies_term_losses(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.WARMUP_ITERS": 4})
    model = build_hkd(cfg)
    model.train()
    with EventStorage():
        torch.manual_seed(0)
        full = model(batch())
        model.distill_iter = 1
        torch.manual_seed(0)
        scaled = model(batch())
    for name in DISTILL_LOSSES:
        assert torch.allclose(scaled[name], 0.25 * full[name], rtol=1e-4), name
    weight = cfg.MODEL.DISTILL.PYRAMID.WEIGHT
    assert torch.allclose(full["loss_pd"], weight * model.last_losses.stats["distill/pd"], rtol=1e-5)
    assert model.last_losses.scales == {name: 0.25 for name in DISTILL_LOSSES}


def test_losses_by_origin(tmp_path):
    """forward returns detection then distillation losses; last_losses has them apart, with each
    term's raw losses and the factors applied."""
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.WARMUP_ITERS": 4})
    model = build_hkd(cfg)
    model.train()
    model.distill_iter = 2
    with EventStorage():
        losses = model(batch())
    step = model.last_losses
    assert list(losses) == [*step.detection, *step.distillation]
    assert set(step.detection) == DETECTION_LOSSES and list(step.distillation) == ["loss_pd", "loss_rd", "loss_ld"]
    assert all(torch.equal(losses[k], v) for k, v in {**step.detection, **step.distillation}.items())
    assert not any(v.requires_grad for v in step.distillation.values())  # kept out of the graph
    assert set(step.raw) == {"PyramidDistill", "RegionDistill", "LogitDistill"}
    assert torch.equal(step.raw["PyramidDistill"]["loss_pd"], step.stats["distill/pd"])
    for term in model.distill_terms:
        for name, raw in step.raw[type(term).__name__].items():
            assert step.scales[name] == 0.5
            assert torch.equal(step.distillation[name], term.weight * raw * 0.5)


def test_old_meta_architecture_name_still_builds(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.META_ARCHITECTURE": "HKDDistiller"})
    model = build_hkd(cfg)
    assert isinstance(model, HKDDistiller) and isinstance(model, Distiller) and model.teacher is not None


def test_a_term_overriding_forward_is_refused():
    with pytest.raises(TypeError, match="implements losses"):
        class _WeightedByItself(DistillTerm):
            def forward(self, ctx):
                return {}


def _ddp_worker(cfg, out_dir):
    from detectron2.engine import SimpleTrainer
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    from hkd_d2.engine import build_distillation_hooks

    rank = comm.get_rank()
    model = build_hkd(cfg, seed=rank)  # different init per rank: DDP must broadcast rank 0's
    optimizer = build_optimizer(cfg, model)
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    data = [batch(seed=10 * rank + i) for i in range(3)]
    trainer = SimpleTrainer(ddp, data, optimizer)
    trainer.register_hooks(build_distillation_hooks(cfg))
    trainer.train(0, 3)
    torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, f"{out_dir}/rank{rank}.pth")


@pytest.mark.slow
def test_ddp_two_processes_keep_students_identical(tmp_path):
    from detectron2.engine import launch

    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.WARMUP_ITERS": 2})
    launch(_ddp_worker, 2, dist_url="auto", args=(cfg, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pth") for r in range(2)]
    assert set(ranks[0]) == set(ranks[1])
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    init = build_hkd(cfg, seed=0).state_dict()
    assert not torch.equal(init["backbone.fpn_output2.weight"], ranks[0]["backbone.fpn_output2.weight"])


def test_detector_loss_factors_follow_the_schedule():
    """A term's factor f on a detection loss (Chen 2017's mu) becomes 1 - scale * (1 - f)."""
    from types import SimpleNamespace

    from hkd_d2.modeling.distill import DistillSchedule

    term = SimpleNamespace(detector_loss_scales={"loss_cls": 0.25}, schedule=DistillSchedule(warmup_iters=2))
    for iteration, expected in ((0, 2.0), (1, 1.25), (2, 0.5)):
        losses = {"loss_cls": torch.tensor(2.0), "loss_box_reg": torch.tensor(3.0)}
        Distiller._scale_detector_losses(SimpleNamespace(distill_terms=[term], distill_iter=iteration), losses)
        assert losses["loss_cls"].item() == pytest.approx(expected)
        assert losses["loss_box_reg"].item() == 3.0

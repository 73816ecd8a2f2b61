"""PCL (peer collaborative learning): its formulas against plain loops, the peers, the mean teacher,
two training iterations alone and with an offline HKD teacher, the export of the mean peer."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from hkd_d2.config import add_hkd_config
from hkd_d2.engine import load_config
from hkd_d2.modeling import PCLDistiller, PCLROIHeads
from hkd_d2.modeling.distill import DistillSchedule
from hkd_d2.modeling.pcl import (ema_alpha, ema_update_, kd_loss, peer_ensemble_kd, peer_mean_kd, rampup_weight,
                                 single_peer_state_dict)

from ..hkd_helpers import TINY, _merge, batch, build_hkd, train_iterations, write_teacher
from ..conftest import CONFIGS

PCL_CONFIG = CONFIGS / "synthetic" / "online" / "pcl.yaml"
PCL_HKD_CONFIG = CONFIGS / "synthetic" / "online" / "pcl_plus_hkd.yaml"
PEER_LOSSES = {f"loss_{name}_peer{k}" for name in ("cls", "box_reg") for k in range(3)}
PCL_LOSSES = {"loss_pcl_ensemble", "loss_pcl_mean"}


def pcl_cfg(config=PCL_CONFIG, **overrides):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(config))
    return _merge(cfg, {**TINY, **overrides})


def _softmax(row, t):
    e = [math.exp(v / t - max(row) / t) for v in row]
    return [v / sum(e) for v in e]


def _oracle_kd(student, teacher, t):
    """T^2 * mean over rows of sum_c p_c log(p_c / q_c), p = softmax(teacher/T), q = softmax(student/T)."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p, q = _softmax(t_row, t), _softmax(s_row, t)
        total += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))
    return t * t * total / len(student)


def _logits(seed, n=3, rows=4, classes=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, classes, generator=g) * 3 for _ in range(n)]


def test_kd_is_t_squared_kl_of_the_softened_teacher_and_trains_the_student_only():
    s, t = (x.requires_grad_() for x in _logits(0, n=2))
    ours = kd_loss(s, t, 3.0)
    assert ours.item() == pytest.approx(_oracle_kd(s.tolist(), t.tolist(), 3.0), rel=1e-5)
    ours.backward()
    assert s.grad is not None and t.grad is None
    assert kd_loss(s[:0], t[:0], 3.0).item() == 0.0


def test_peer_ensemble_and_peer_mean_kd_follow_the_paper():
    peers, means, ensemble = _logits(1), _logits(2), _logits(3, n=1)[0]
    t = 3.0
    ens = sum(_oracle_kd(z.tolist(), ensemble.tolist(), t) for z in peers)
    assert peer_ensemble_kd(peers, ensemble, t).item() == pytest.approx(ens, rel=1e-5)
    mean = sum(sum(_oracle_kd(peers[k].tolist(), means[l].tolist(), t) for l in range(3) if l != k) / 2 for k in range(3))
    assert peer_mean_kd(peers, means, t).item() == pytest.approx(mean, rel=1e-5)
    with pytest.raises(ValueError, match="m >= 2"):
        peer_mean_kd(peers[:1], means[:1], t)


@pytest.mark.parametrize("progress,expected", [(0.0, math.exp(-5)), (0.25, math.exp(-5 * 0.75 ** 2)),
                                               (0.5, math.exp(-1.25)), (1.0, 1.0), (1.7, 1.0), (-1.0, math.exp(-5))])
def test_rampup_values(progress, expected):
    assert rampup_weight(progress) == pytest.approx(expected, rel=1e-12)


def test_ema_after_k_steps_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    lives = [rng.normal(size=(3, 2)) for _ in range(6)]
    decay = 0.6
    mean = torch.zeros(3, 2, dtype=torch.float64)
    oracle = np.zeros((3, 2))
    for step, live in enumerate(lives):
        alpha = min(1 - 1 / (step + 1), decay)
        assert ema_alpha(step, decay) == pytest.approx(alpha)
        oracle = alpha * oracle + (1 - alpha) * live
        ema_update_([mean], [torch.from_numpy(live)], ema_alpha(step, decay))
        np.testing.assert_allclose(mean.numpy(), oracle, rtol=1e-12)
    # The first updates are the plain average of the weights so far, then the exponential one.
    np.testing.assert_allclose(ema_alpha(0, decay), 0.0)
    np.testing.assert_allclose(ema_alpha(1, decay), 0.5)
    np.testing.assert_allclose(ema_alpha(5, decay), decay)


def test_peers_ensemble_and_deployed_peer_of_the_roi_heads():
    model = build_hkd(pcl_cfg(**{"MODEL.PCL.DEPLOY_PEER": 2}))
    heads = model.roi_heads
    assert isinstance(heads, PCLROIHeads) and heads.num_peers == 3
    # Peers are initialised independently.
    assert not torch.equal(heads.peer(0)[0].fc1.weight, heads.peer(1)[0].fc1.weight)
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(5, 32, generator=g) for _ in range(3)]
    w, b = heads.ensemble.weight.detach().numpy(), heads.ensemble.bias.detach().numpy()
    expected = np.concatenate([f.numpy() for f in features], axis=1) @ w.T + b
    np.testing.assert_allclose(heads.ensemble_logits(features).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # A term's factor on loss_cls (Chen 2017's mu) scales the deployed peer's; the RPN's stay theirs.
    del model.distill_terms  # a stand-in term, as tests/modeling/test_distiller.py's
    model.distill_terms = [SimpleNamespace(detector_loss_scales={"loss_cls": 0.25, "loss_rpn_cls": 0.5},
                                           schedule=DistillSchedule())]
    losses = {name: torch.tensor(2.0) for name in ("loss_rpn_cls", *sorted(PEER_LOSSES))}
    model._scale_detector_losses(losses)
    assert losses.pop("loss_cls_peer2").item() == 0.5 and losses.pop("loss_rpn_cls").item() == 1.0
    assert all(v.item() == 2.0 for v in losses.values())


def test_kd_ramp_up_follows_the_training_progress():
    model = build_hkd(pcl_cfg(**{"SOLVER.MAX_ITER": 8}))
    assert model.kd_scale(None) == 1.0
    assert model.kd_scale(2) == pytest.approx(math.exp(-5 * (1 - 2 / 8) ** 2))
    assert build_hkd(pcl_cfg(**{"MODEL.PCL.RAMPUP_ITERS": 4})).kd_scale(2) == pytest.approx(math.exp(-1.25))
    assert build_hkd(pcl_cfg(**{"MODEL.PCL.RAMPUP": False})).kd_scale(2) == 1.0
    model.train()
    model.distill_iter = 2
    with EventStorage():
        losses = model(batch())
    step = model.last_losses
    assert step.scales["loss_pcl_mean"] == pytest.approx(math.exp(-5 * 0.75 ** 2))
    assert losses["loss_pcl_mean"].item() == pytest.approx(step.stats["pcl/mean_kd"].item() * step.scales["loss_pcl_mean"])
    assert {"loss_cls_ensemble", *PEER_LOSSES} <= set(step.detection) and set(step.distillation) == PCL_LOSSES


def test_mean_teacher_is_an_ema_of_the_live_weights_outside_the_trained_model():
    cfg = pcl_cfg(**{"MODEL.PCL.EMA_DECAY": 0.5})
    model = build_hkd(cfg)
    mean = model.mean_teacher
    assert not any(k.startswith("mean_teacher") or "_mean_teacher" in k for k in model.state_dict())
    assert {id(p) for p in mean.parameters()}.isdisjoint(id(p) for p in model.parameters())
    optimized = {id(p) for group in build_optimizer(cfg, model).param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in mean.parameters())
    name = "roi_heads.peer_predictors.1.cls_score.weight"
    live = dict(model.named_parameters())[name]
    oracle = None
    for step in range(4):
        with torch.no_grad():
            live.add_(float(step + 1))
        alpha = model.update_mean_teacher(step)
        value = live.detach().numpy().copy()
        oracle = value if oracle is None else alpha * oracle + (1 - alpha) * value
        np.testing.assert_allclose(dict(mean.named_parameters())[name].detach().numpy(), oracle, rtol=1e-6)
    assert not mean.training and not any(p.requires_grad for p in mean.parameters())


@pytest.mark.parametrize("config,extra", [(PCL_CONFIG, set()), (PCL_HKD_CONFIG, {"loss_pd", "loss_rd", "loss_ld"})])
def test_config_trains_two_iterations(config, extra, tmp_path):
    teacher = write_teacher(tmp_path, depth=50) if extra else {}
    cfg = pcl_cfg(config, **teacher)
    seen = []

    def check(losses):
        expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls_ensemble", *PEER_LOSSES, *PCL_LOSSES, *extra}
        assert set(losses) == expected
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
        assert all(losses[k].item() != 0 for k in (*PCL_LOSSES, *extra, "loss_cls_ensemble"))
        seen.append(losses)

    model = train_iterations(cfg, check=check)
    assert len(seen) == 2 and isinstance(model, PCLDistiller)
    assert (model.teacher is not None) == bool(extra)


def test_offline_terms_read_the_shared_rois_and_the_deployed_peer(tmp_path):
    cfg = pcl_cfg(PCL_HKD_CONFIG, **write_teacher(tmp_path, depth=50), **{"MODEL.PCL.DEPLOY_PEER": 1})
    model = build_hkd(cfg)
    contexts = []
    logit_term = next(t for t in model.distill_terms if type(t).__name__ == "LogitDistill")
    logit_term.register_forward_hook(lambda _m, args, _out: contexts.append(args[0]))
    model.train()
    with EventStorage():
        model(batch())
    ctx = contexts[0]
    rois = sum(len(p) for p in ctx.proposals)
    assert ctx.student.roi.scores.shape[0] == ctx.teacher.roi.scores.shape[0] == rois
    assert set(ctx.student.features) >= {"p2", "p3", "p4", "p5"}
    head, predictor = model.roi_heads.peer(1)
    with torch.no_grad():
        scores, _ = predictor(head(ctx.student.roi.features))
    torch.testing.assert_close(ctx.student.roi.scores, scores)


def test_wrong_heads_or_peer_counts_are_refused():
    with pytest.raises(TypeError, match="PCLROIHeads"):
        build_model(pcl_cfg(**{"MODEL.ROI_HEADS.NAME": "PedestrianROIHeads"}))
    with pytest.raises(ValueError, match="NUM_PEERS must be at least 2"):
        build_model(pcl_cfg(**{"MODEL.PCL.NUM_PEERS": 1}))
    with pytest.raises(ValueError, match="DEPLOY_PEER 3"):
        build_model(pcl_cfg(**{"MODEL.PCL.DEPLOY_PEER": 3}))


def test_single_peer_state_dict_renames_the_peer_and_drops_the_rest():
    state = {"backbone.w": 1, "roi_heads.box_head.fc1.weight": 2, "roi_heads.box_predictor.cls_score.weight": 3,
             "roi_heads.peer_heads.0.fc1.weight": 4, "roi_heads.peer_predictors.0.cls_score.weight": 5,
             "roi_heads.peer_heads.1.fc1.weight": 6, "roi_heads.peer_predictors.1.cls_score.weight": 7,
             "roi_heads.ensemble.weight": 8, "roi_heads.box_pooler.fuse.weight": 9}
    assert single_peer_state_dict(state, 2, 3) == {"backbone.w": 1, "roi_heads.box_head.fc1.weight": 6,
                                                  "roi_heads.box_predictor.cls_score.weight": 7,
                                                  "roi_heads.box_pooler.fuse.weight": 9}
    assert single_peer_state_dict(state, 0, 3) == {"backbone.w": 1, "roi_heads.box_head.fc1.weight": 2,
                                                  "roi_heads.box_predictor.cls_score.weight": 3,
                                                  "roi_heads.box_pooler.fuse.weight": 9}


@pytest.mark.parametrize("path", [PCL_CONFIG, PCL_HKD_CONFIG, CONFIGS / "citypersons" / "online" / "pcl.yaml"])
def test_online_configs(path):
    cfg = load_config(str(path))
    dataset = path.parent.parent.name
    assert cfg.OUTPUT_DIR.endswith(f"{dataset}/online/{path.stem}")
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.ROI_HEADS.NAME) == ("PCLDistiller", "PCLROIHeads")
    assert (cfg.MODEL.PCL.NUM_PEERS, cfg.MODEL.PCL.TEMPERATURE, cfg.MODEL.PCL.EMA_DECAY) == (3, 3.0, 0.999)
    hkd = ["PyramidDistill", "RegionDistill", "LogitDistill"] if "hkd" in path.stem else []
    assert list(cfg.MODEL.DISTILL.TERMS) == hkd
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.DATASETS.TRAIN[0].startswith(dataset)
    if hkd:
        assert cfg.MODEL.TEACHER.CONFIG_FILE.endswith("teacher_R50_FPN.yaml")

"""DistillationHook: the iteration on the model, applied factors and term statistics in the EventStorage."""
import pytest
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.solver import build_optimizer

from hkd_d2.config import add_hkd_config
from hkd_d2.engine import DistillationHook, build_distillation_hooks
from hkd_d2.modeling.distill import DistillSchedule, linear_warmup
from hkd_d2.modeling.distill.gkd_prototypes import PrototypeHook

from ..hkd_helpers import batch, build_hkd, hkd_cfg, write_teacher


@pytest.mark.parametrize(
    "iteration, warmup, scale",
    [(0, 10, 0.0), (1, 10, 0.1), (5, 10, 0.5), (10, 10, 1.0), (25, 10, 1.0), (0, 0, 1.0), (7, 0, 1.0)],
)
def test_linear_warmup_values(iteration, warmup, scale):
    assert linear_warmup(iteration, warmup) == pytest.approx(scale)


def test_schedule_start_warmup_and_attenuation():
    schedule = DistillSchedule(warmup_iters=4, start_iter=10, max_iter=100, attenuated=frozenset({"loss_a"}))
    assert [schedule.scale(i) for i in (0, 9, 10, 12, 14, 50)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert schedule.loss_scale("loss_a", 50) == pytest.approx(0.5)
    assert schedule.loss_scale("loss_b", 50) == 1.0
    assert schedule.loss_scale("loss_a", None) == 1.0


def test_hooks_only_for_distillers():
    cfg = add_hkd_config(get_cfg())
    assert build_distillation_hooks(cfg) == []
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    (hook,) = build_distillation_hooks(cfg)
    assert isinstance(hook, DistillationHook)
    # Every weight 0: the config does not distill.
    for key in ("PYRAMID", "REGION", "LOGIT"):
        cfg.MODEL.DISTILL[key].WEIGHT = 0.0
    assert build_distillation_hooks(cfg) == []


def test_training_records_the_applied_factors_and_term_statistics(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.WARMUP_ITERS": 2,
                                               "MODEL.DISTILL.TERMS": ["PyramidDistill", "LogitDistill"]})
    model = build_hkd(cfg)
    iterations = []
    model.register_forward_pre_hook(lambda m, _inputs: iterations.append(m.distill_iter))
    trainer = SimpleTrainer(model, [batch(seed=i) for i in range(3)], build_optimizer(cfg, model))
    trainer.register_hooks(build_distillation_hooks(cfg))
    trainer.train(0, 3)
    assert iterations == [0, 1, 2]
    history = trainer.storage.histories()
    # The factors as applied, one per loss.
    for name in ("loss_pd", "loss_ld"):
        assert [v for v, _ in history[f"distill/scale_{name}"].values()] == [0.0, 0.5, 1.0]
    assert "distill/scale_loss_rd" not in history
    for name in ("distill/pd", "distill/pd_p2", "distill/pd_p5", "distill/ld"):
        assert len(history[name].values()) == 3 and history[name].latest() > 0, name
    assert "distill/rd" not in history
    # loss_* values are weighted and scaled: 0 at iteration 0, weight x raw value at the end.
    assert history["loss_pd"].values()[0][0] == 0.0
    weight = cfg.MODEL.DISTILL.PYRAMID.WEIGHT
    assert history["loss_pd"].latest() == pytest.approx(weight * history["distill/pd"].latest(), rel=1e-5)


def test_terms_with_a_hook_get_it(monkeypatch):
    """A term declaring hooks (GKD's prototype hook) gets them after the schedule hook; a term of
    weight 0 does not."""
    from hkd_d2.modeling.distill.pkd import PKDDistill

    monkeypatch.setattr(PKDDistill, "hooks", (lambda cfg: ("hook for", cfg.MODEL.DISTILL.PKD.WEIGHT),))
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.DISTILL.TERMS = ["PyramidDistill", "PKDDistill"]
    built = build_distillation_hooks(cfg)
    assert isinstance(built[0], DistillationHook)
    assert built[1:] == [("hook for", 6.0)]
    cfg.MODEL.DISTILL.PKD.WEIGHT = 0.0
    assert len(build_distillation_hooks(cfg)) == 1


def test_gkd_declares_the_prototype_hook():
    from hkd_d2.modeling.distill.gkd import GKDDistill

    assert GKDDistill.hooks == (PrototypeHook,)

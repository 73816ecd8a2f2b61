"""DistillationHook: warm-up schedule on the model, scale and term statistics in the EventStorage."""
import pytest
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.solver import build_optimizer

from hkd_d2.config import add_hkd_config
from hkd_d2.engine import DistillationHook, build_distillation_hooks
from hkd_d2.engine.hooks import linear_warmup

from .hkd_helpers import batch, build_hkd, hkd_cfg, write_teacher


@pytest.mark.parametrize(
    "iteration, warmup, scale",
    [(0, 10, 0.0), (1, 10, 0.1), (5, 10, 0.5), (10, 10, 1.0), (25, 10, 1.0), (0, 0, 1.0), (7, 0, 1.0)],
)
def test_linear_warmup_values(iteration, warmup, scale):
    assert linear_warmup(iteration, warmup) == pytest.approx(scale)


def test_hooks_only_for_distillers():
    cfg = add_hkd_config(get_cfg())
    assert build_distillation_hooks(cfg) == []
    cfg.MODEL.META_ARCHITECTURE = "HKDDistiller"
    cfg.MODEL.DISTILL.WARMUP_ITERS = 7
    (hook,) = build_distillation_hooks(cfg)
    assert isinstance(hook, DistillationHook) and hook.warmup_iters == 7


def test_training_records_scale_and_term_statistics(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.WARMUP_ITERS": 2,
                                               "MODEL.DISTILL.TERMS": ["PyramidDistill", "LogitDistill"]})
    model = build_hkd(cfg)
    scales = []
    model.register_forward_pre_hook(lambda m, _inputs: scales.append(m.distill_scale))
    trainer = SimpleTrainer(model, [batch(seed=i) for i in range(3)], build_optimizer(cfg, model))
    trainer.register_hooks(build_distillation_hooks(cfg))
    trainer.train(0, 3)
    assert scales == [0.0, 0.5, 1.0]
    history = trainer.storage.histories()
    assert [v for v, _ in history["distill/scale"].values()] == [0.0, 0.5, 1.0]
    for name in ("distill/pd", "distill/pd_p2", "distill/pd_p5", "distill/ld"):
        assert len(history[name].values()) == 3 and history[name].latest() > 0, name
    assert "distill/rd" not in history
    # loss_* values are weighted and scaled: 0 at iteration 0, weight x raw value at the end.
    assert history["loss_pd"].values()[0][0] == 0.0
    weight = cfg.MODEL.DISTILL.PYRAMID.WEIGHT
    assert history["loss_pd"].latest() == pytest.approx(weight * history["distill/pd"].latest(), rel=1e-5)


def test_terms_with_a_hook_get_it(monkeypatch):
    """A term listed in TERM_HOOKS (GKD's prototype hook) gets its hook after the schedule hook."""
    from hkd_d2.engine import hooks as hooks_module

    monkeypatch.setitem(hooks_module.TERM_HOOKS, "PKDDistill", lambda cfg: ("hook for", cfg.MODEL.DISTILL.PKD.WEIGHT))
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "HKDDistiller"
    cfg.MODEL.DISTILL.TERMS = ["PyramidDistill", "PKDDistill"]
    built = build_distillation_hooks(cfg)
    assert isinstance(built[0], DistillationHook)
    assert built[1:] == [("hook for", 6.0)]

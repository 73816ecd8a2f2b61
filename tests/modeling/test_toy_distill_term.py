"""Adding a method is one file: a toy term from tests/toy_distill_term.py trains two iterations;
a term's Defaults are checked when its class is defined."""
import pytest
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.solver import build_optimizer

from hkd_d2.config import add_hkd_config
from hkd_d2.engine import build_distillation_hooks
from hkd_d2.modeling.distill import DistillTerm

from .. import toy_distill_term
from ..hkd_helpers import batch, build_hkd, hkd_cfg, registered_term, withhold_term, write_teacher

# The toy term and its keys exist only inside its test (see withhold_term).
_TOY = withhold_term("ToyDistill")


def test_toy_term_from_one_file_trains_two_iterations(tmp_path):
    with registered_term(_TOY):
        _train_toy_term(tmp_path)


def _train_toy_term(tmp_path):
    cfg = hkd_cfg(write_teacher(tmp_path), **{"MODEL.DISTILL.TERMS": ["ToyDistill"], "MODEL.DISTILL.WARMUP_ITERS": 0})
    assert cfg.MODEL.DISTILL.TOY.WEIGHT == 0.5 and cfg.MODEL.DISTILL.TOY.START_ITER == 1
    model = build_hkd(cfg)
    assert [type(t).__name__ for t in model.distill_terms] == ["ToyDistill"]
    trainer = SimpleTrainer(model, [batch(seed=i) for i in range(2)], build_optimizer(cfg, model))
    hooks = build_distillation_hooks(cfg)
    (toy_hook,) = [h for h in hooks if isinstance(h, toy_distill_term.ToyHook)]
    trainer.register_hooks(hooks)
    trainer.train(0, 2)
    assert toy_hook.steps == 2
    history = trainer.storage.histories()
    toy = [v for v, _ in history["distill/toy"].values()]
    losses = [v for v, _ in history["loss_toy"].values()]
    # Off at iteration 0 (START_ITER 1), then weight x the raw value.
    assert losses[0] == 0.0 and toy[0] > 0
    assert losses[1] == pytest.approx(0.5 * toy[1], rel=1e-5)
    assert [v for v, _ in history["distill/scale_loss_toy"].values()] == [0.0, 1.0]


def test_term_defaults_need_upper_case_keys_and_a_weight():
    with pytest.raises(TypeError, match="WEIGHT among them"):
        class _NoWeight(DistillTerm):
            CONFIG_NODE = "MODEL.DISTILL.NO_WEIGHT"

            class Defaults:
                # Some option.
                OPTION = 1
    with pytest.raises(TypeError, match="upper-case keys"):
        class _LowerCase(DistillTerm):
            CONFIG_NODE = "MODEL.DISTILL.LOWER_CASE"

            class Defaults:
                # Weight.
                WEIGHT = 1.0
                # Not a config key name.
                option = 1


def test_a_config_edited_in_place_leaves_the_declared_defaults_as_they_are():
    first = get_cfg()
    add_hkd_config(first)
    first.MODEL.DISTILL.PYRAMID.IN_FEATURES.remove("p2")
    second = get_cfg()
    add_hkd_config(second)
    assert second.MODEL.DISTILL.PYRAMID.IN_FEATURES == ["p2", "p3", "p4", "p5"]

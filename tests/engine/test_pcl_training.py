"""PCL through the Trainer: the mean-teacher hook (before the checkpointer), the logged losses and
statistics, and a resume that restores the mean teacher and continues its decay schedule."""
import json
import math

import pytest
import torch
from detectron2.engine import hooks

from hkd_d2.engine import Trainer
from hkd_d2.engine.hooks import DistillationHook
from hkd_d2.modeling.pcl import MEAN_TEACHER_KEY, MeanTeacherHook

from ..hkd_helpers import register_tiny_citypersons, trainer_cfg
from ..modeling.test_pcl import PCL_CONFIG


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    return register_tiny_citypersons(tmp_path_factory.mktemp("pcl_data"), "pcl_tiny_train")


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]


def _train(cfg, resume=False) -> Trainer:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_training_logs_pcl_and_resume_restores_the_mean_teacher(tiny_train, tmp_path):
    cfg = trainer_cfg(PCL_CONFIG, {}, tiny_train, tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 1})
    trainer = _train(cfg)
    kinds = [type(h) for h in trainer._hooks]
    assert DistillationHook in kinds
    assert kinds.index(MeanTeacherHook) < kinds.index(hooks.PeriodicCheckpointer)
    last = [m for m in _metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 1
    assert {"loss_pcl_ensemble", "loss_pcl_mean", "loss_cls_ensemble", "loss_cls_peer2"} <= set(last)
    assert last["pcl/ema_alpha"] == pytest.approx(0.5)  # update 1: the mean of the two steps' weights
    assert last["distill/scale_loss_pcl_mean"] == pytest.approx(math.exp(-5 * (1 - 1 / 2) ** 2))
    assert math.isfinite(last["pcl/mean_kd"]) and math.isfinite(last["pcl/ensemble_kd"])

    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    mean = saved[MEAN_TEACHER_KEY]
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(mean[name], saved["model"][name])  # the mean lags the live weights

    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 3
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    restored = resumed.model.mean_teacher.state_dict()
    assert restored.keys() == mean.keys() and all(torch.equal(restored[k], mean[k]) for k in mean)
    resumed.train()
    last = [m for m in _metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 2 and last["pcl/ema_alpha"] == pytest.approx(2 / 3)

"""An online-distillation run through the Trainer: one checkpoint holds student and teacher (and
the optimizer state of both), --resume resumes both, export and --eval-only take the student alone."""
import json
import math

import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from hkd_d2.checkpoint import DistillCheckpointer, WeightsMismatchError, load_detector_weights
from hkd_d2.deploy import DeployedPredictor
from hkd_d2.engine import Trainer
from hkd_d2.engine.evaluate import build_test_checkpointer, build_test_model
from hkd_d2.export import DetectorGraph, export_formats, load_student_config

from ..hkd_helpers import register_tiny_citypersons, student_keys, trainer_cfg, write_teacher
from ..conftest import CONFIGS

ONLINE_CONFIG = CONFIGS / "synthetic" / "online" / "online_teacher_hkd.yaml"
TEACHER = "teacher."


def _train(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    """Two iterations of the shipped synthetic online config through the Trainer, made tiny (its
    teacher a tiny R18, from scratch)."""
    data = register_tiny_citypersons(tmp_path_factory.mktemp("online_data"), "online_teacher_tiny_train")
    out = tmp_path_factory.mktemp("online_run")
    teacher = dict(write_teacher(tmp_path_factory.mktemp("online_teacher")), **{"MODEL.TEACHER.WEIGHTS": ""})
    cfg = trainer_cfg(ONLINE_CONFIG, teacher, data, out)
    trainer = _train(cfg)
    return cfg, out, trainer


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_one_checkpoint_holds_student_teacher_and_their_optimizer_state(online_run):
    cfg, out, trainer = online_run
    saved = _checkpoint(out / "model_final.pth")
    model = trainer.model
    teacher = {k for k in saved["model"] if k.startswith(TEACHER)}
    assert teacher == {TEACHER + "detector." + k for k in model.teacher.detector.state_dict()}
    adapters = {k for k in saved["model"] if k.startswith("distill_terms.")}
    assert set(saved["model"]) - teacher - adapters == student_keys(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p is q for p in trainable for q in model.teacher.parameters())
    assert len(saved["trainer"]["_trainer"]["optimizer"]["state"]) == len(trainable)  # momentum of every parameter
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    last = [m for m in metrics if "total_loss" in m][-1]
    assert {"teacher/loss_cls", "teacher/loss_rpn_cls", "teacher/rpn/num_pos_anchors", "loss_pd"} <= set(last)
    assert all(math.isfinite(last[k]) for k in last if k.startswith("teacher/loss_"))


def test_resume_resumes_student_and_teacher(online_run):
    cfg, out, _ = online_run
    saved = _checkpoint(out / "model_final.pth")["model"]
    resumed = cfg.clone()
    resumed.defrost()
    resumed.SOLVER.MAX_ITER = 3
    trainer = Trainer(resumed)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    trainer.train()
    after = _checkpoint(out / "model_final.pth")
    assert after["iteration"] == 2
    assert any(not torch.equal(after["model"][k], v) for k, v in saved.items() if k.startswith(TEACHER + "detector.roi_heads"))


def test_resume_refuses_a_checkpoint_without_the_teacher(online_run, tmp_path):
    """A student-only file starts an online run (MODEL.WEIGHTS), but resuming from one would restart
    the teacher unnoticed: refused, naming the teacher's keys."""
    cfg, out, _ = online_run
    saved = _checkpoint(out / "model_final.pth")
    student_only = {k: v for k, v in saved["model"].items() if not k.startswith(TEACHER)}
    torch.save({"model": student_only, "iteration": 1}, tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    model = build_model(cfg)
    DistillCheckpointer(model, str(tmp_path)).resume_or_load(str(tmp_path / "model_0000001.pth"), resume=False)
    with pytest.raises(WeightsMismatchError, match=r"model_0000001.pth(.|\n)*missing in the file: teacher\.detector\."):
        DistillCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)


def test_export_and_evaluation_take_the_student_alone(online_run, tmp_path):
    cfg, out, _ = online_run
    weights = str(out / "model_final.pth")
    saved = _checkpoint(weights)["model"]
    written = export_formats(cfg, weights, str(tmp_path / "export"), ("pytorch",))
    exported = torch.load(written["weights"])["model"]
    assert set(exported) == student_keys(cfg)
    assert not any(k.startswith(TEACHER) for k in exported)
    assert all(torch.equal(v, saved[k]) for k, v in exported.items())
    student_cfg = load_student_config(written["config"])
    assert student_cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and not student_cfg.MODEL.TEACHER.ONLINE
    predictor = DefaultPredictor(student_cfg)
    load_detector_weights(predictor.model, written["weights"])  # strict: any extra or missing key raises

    evaluated = build_test_model(cfg)
    build_test_checkpointer(cfg, evaluated).resume_or_load(weights, resume=False)
    assert all(torch.equal(v, saved[k]) for k, v in evaluated.state_dict().items())


@pytest.mark.slow
def test_exported_graphs_give_the_students_detections(online_run, tmp_path):
    cfg, out, _ = online_run
    written = export_formats(cfg, str(out / "model_final.pth"), str(tmp_path / "export"),
                             ("pytorch", "torchscript", "onnx"))
    predictor = DefaultPredictor(load_student_config(written["config"]))
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    graph_input = DeployedPredictor(written["torchscript"]).preprocess(image)
    with torch.no_grad():
        boxes, scores, classes = DetectorGraph(predictor.model.eval())(graph_input)
    assert len(scores) > 0
    for runtime in ("torchscript", "onnx"):
        got_boxes, got_scores, got_classes = DeployedPredictor(written[runtime]).model.runtime(graph_input)
        assert torch.equal(got_classes, classes), runtime
        assert torch.allclose(got_scores, scores, atol=1e-4, rtol=0), runtime
        assert torch.allclose(got_boxes, boxes, atol=1e-2, rtol=0), runtime

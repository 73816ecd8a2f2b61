"""Export of a PCL model: the mean teacher's deployed peer as a plain GeneralizedRCNN with the PCL
model's own detections, through the usual export path (and ``--eval-only``'s loading)."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from hkd_d2.checkpoint import DistillCheckpointer, load_detector_weights
from hkd_d2.deploy import DeployedPredictor
from hkd_d2.engine.evaluate import StudentCheckpointer, build_test_model
from hkd_d2.export import export_formats, load_student_config
from hkd_d2.modeling.distiller import extra_checkpointables
from hkd_d2.modeling.pcl import MEAN_TEACHER_KEY, single_peer_state_dict
from hkd_d2.tools.inference import build_predictor

from ..hkd_helpers import batch, train_iterations
from ..modeling.test_pcl import pcl_cfg
from .test_deploy import assert_same_detections

DEPLOY_PEER = 1
STEPS = 3


@pytest.fixture(scope="module")
def pcl_run(tmp_path_factory):
    """A PCL model (PyRoIAlign, peer 1 deployed) trained 3 steps with a mean teacher that lags the live
    weights, saved as the trainer saves it, and exported to every format."""
    tmp = tmp_path_factory.mktemp("pcl_export")
    cfg = pcl_cfg(**{"MODEL.PCL.DEPLOY_PEER": DEPLOY_PEER, "MODEL.PCL.EMA_DECAY": 0.5,
                     "MODEL.ROI_BOX_HEAD.POOLER_NAME": "PyRoIAlign"})
    model = train_iterations(cfg, STEPS, after_step=lambda m, step: m.update_mean_teacher(step)).eval()
    DistillCheckpointer(model, str(tmp), **extra_checkpointables(model)).save("model_final", iteration=STEPS - 1)
    weights = str(tmp / "model_final.pth")
    written = export_formats(cfg, weights, str(tmp / "export"), ["pytorch", "torchscript", "onnx"])
    return {"cfg": cfg, "model": model, "weights": weights, "written": written, "tmp": tmp}


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def test_exported_student_is_the_mean_teachers_deployed_peer(pcl_run):
    model, written = pcl_run["model"], pcl_run["written"]
    student_cfg = load_student_config(written["config"])
    assert student_cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert student_cfg.MODEL.ROI_HEADS.NAME == "PedestrianROIHeads"
    assert "PCL" not in open(written["config"]).read()
    saved = torch.load(written["weights"])["model"]
    mean = single_peer_state_dict(model.mean_teacher.state_dict(), DEPLOY_PEER, 3)
    assert saved.keys() == mean.keys() and all(torch.equal(saved[k], mean[k]) for k in saved)
    # The mean, not the live weights.
    live = model.roi_heads.peer(DEPLOY_PEER)[1].cls_score.weight
    assert not torch.equal(saved["roi_heads.box_predictor.cls_score.weight"], live)


def test_exported_generalized_rcnn_gives_the_pcl_models_detections(pcl_run):
    model, written = pcl_run["model"], pcl_run["written"]
    # The PCL model's score threshold (student.yaml carries the deployment one, EXPORT.SCORE_THRESH_TEST).
    threshold = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(pcl_run["cfg"].MODEL.ROI_HEADS.SCORE_THRESH_TEST)]
    student = build_model(load_student_config(written["config"], threshold)).eval()
    load_detector_weights(student, written["weights"])  # strict: every key fits
    assert type(student).__name__ == "GeneralizedRCNN" and type(student.roi_heads).__name__ == "PedestrianROIHeads"
    for seed in range(2):
        inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batch(seed=seed)]
        with torch.no_grad():
            ours, theirs = model(inputs), student(inputs)
        for a, b in zip(ours, theirs):
            a, b = a["instances"], b["instances"]
            assert len(a) > 0
            assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
            assert torch.equal(a.pred_classes, b.pred_classes)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torchscript", "onnx"])
def test_graphs_of_the_exported_peer_match_pytorch(pcl_run, runtime):
    written = pcl_run["written"]
    pytorch = build_predictor(load_student_config(written["config"], ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"]))
    deployed = DeployedPredictor(written[runtime], score_threshold=0.05)
    scores = [s for seed in range(2) for s in assert_same_detections(pytorch, deployed, _image(seed))]
    assert scores


def test_eval_only_loads_the_deployed_peer(pcl_run):
    cfg, written = pcl_run["cfg"], pcl_run["written"]
    model = build_test_model(cfg)
    StudentCheckpointer(model, training_cfg=cfg).load(pcl_run["weights"])
    saved = torch.load(written["weights"])["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_without_mean_teacher_is_named(pcl_run):
    checkpoint = torch.load(pcl_run["weights"], weights_only=False)
    del checkpoint[MEAN_TEACHER_KEY]
    path = pcl_run["tmp"] / "live_only.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="live_only.pth holds no PCL mean teacher"):
        export_formats(pcl_run["cfg"], str(path), str(pcl_run["tmp"] / "nothing"), ["pytorch"])
    assert not (pcl_run["tmp"] / "nothing").exists()

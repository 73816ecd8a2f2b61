"""Exported students (TorchScript, ONNX, int8 ONNX) give the PyTorch student's detections and MR.

One small student is trained on generated 72x96 images until it finds pedestrians (so its scores
are not flat and its MR is below 100) and exported once by the command-line tool; every test reads
that export. A random-weight student, traced on one image, is run on images whose proposal counts
differ from the traced one.
"""
import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from hkd_d2.config import add_hkd_config
from hkd_d2.deploy import METADATA_KEY, DeployedPredictor, ExportMetadata, load_runtime
from hkd_d2.engine import Trainer
from hkd_d2.export import DetectorGraph, export_onnx, load_student_config
from hkd_d2.tools.inference import build_predictor
from hkd_d2.tools.runs import build_run_config, evaluate
from hkd_d2.tools.video import main as video_main

from ..hkd_helpers import synthetic_dataset
from ..tools.test_tools import _write_video
from ..conftest import REPO

TOOL = REPO / "tools" / "export_student.py"
STUDENT = REPO / "configs" / "synthetic" / "student_R18_FPN.yaml"
# Parity tolerances (docs/deployment.md): boxes in original-image pixels, scores, MR points.
BOX_TOL_PX = 1e-2
SCORE_TOL = 1e-4
MR_TOL = 0.1
# Detections compared from this score on (the graph keeps scores > SCORE_THRESH_TEST 0.01).
COMPARE_THRESH = 0.05
TRAIN, VAL = "deploy_test_train", "deploy_test_val"
RUNTIMES = ("torchscript", "onnx")
# SOLVER.MAX_ITER of the training rounds: the student trains on (resuming) until it finds some
# pedestrian (MR All < 100). How many iterations that takes depends on the Detectron2 build (its
# initialisation and sampling), not on the exports under test.
TRAIN_ROUNDS = (30, 60, 120, 240)


def _train_opts(iters: int):
    return ["MODEL.DEVICE", "cpu", "MODEL.ROI_BOX_HEAD.POOLER_NAME", "PyRoIAlign", "MODEL.FPN.OUT_CHANNELS", "32",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", f"('{VAL}',)",
            "INPUT.MIN_SIZE_TRAIN", "(72,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "72",
            "INPUT.MAX_SIZE_TEST", "96", "SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", "5",
            "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "SEED", "0"]


# A random-weight student traced on a (3, 64, 96) image: every score is kept (threshold 0), and
# POST_NMS_TOPK_TEST is above the RPN's PRE_NMS_TOPK_TEST, so an image's proposal count is what
# its NMS leaves, and it varies with the image.
RANDOM_STUDENT_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
                       "MODEL.ROI_BOX_HEAD.POOLER_NAME", "PyRoIAlign", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
                       "MODEL.RPN.POST_NMS_TOPK_TEST", "1000", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                       "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
# Graph inputs (H, W) of the random student, other sizes and contents than the traced one.
GRAPH_INPUT_SIZES = ((64, 96), (32, 40), (48, 64), (80, 120))


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_student_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _train_until_it_detects(out: Path):
    """Train the student in TRAIN_ROUNDS until its MR All on VAL is below 100; its config."""
    for iters in TRAIN_ROUNDS:
        cfg = build_run_config(str(STUDENT), _train_opts(iters), str(out))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
        if evaluate(cfg, trainer.model, str(out / f"eval_{iters}"), VAL)["All"] < 100.0:
            return cfg
    pytest.fail(f"The student found no pedestrian of {VAL} after {TRAIN_ROUNDS[-1]} iterations")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Train a small student until it detects, export every format + int8 with the CLI."""
    tmp = tmp_path_factory.mktemp("deploy")
    # Validated on the training images: the first ones a briefly trained student finds.
    with synthetic_dataset(tmp / "data", [TRAIN, VAL], 8, 96, 72):
        cfg = _train_until_it_detects(tmp / "train")
        config_file = tmp / "student_train.yaml"
        config_file.write_text(cfg.dump())
        out = tmp / "export"
        written = _load_tool().main(["--config-file", str(config_file), "--weights", str(tmp / "train" / "model_final.pth"),
                                     "--output", str(out), "--format", "pytorch", "torchscript", "onnx",
                                     "--int8", "--calib-images", "4"])
        yield {"cfg": cfg, "written": written, "out": out, "tmp": tmp}


def _pytorch_predictor(written, threshold: float):
    return build_predictor(load_student_config(written["config"], ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(threshold)]))


def assert_same_detections(pytorch, deployed, image: np.ndarray) -> list:
    """The PyTorch predictor's and an exported model's detections on ``image`` (BGR) agree within
    the parity tolerances; returns their scores."""
    a, b = pytorch(image)["instances"], deployed(image)["instances"]
    assert b.image_size == a.image_size == image.shape[:2]
    assert len(a) == len(b)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.scores, b.scores, atol=SCORE_TOL, rtol=0)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=BOX_TOL_PX, rtol=0)
    return a.scores.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_same_detections_as_pytorch(exported, runtime):
    pytorch = _pytorch_predictor(exported["written"], COMPARE_THRESH)
    deployed = DeployedPredictor(exported["written"][runtime], score_threshold=COMPARE_THRESH)
    scores = []
    for record in DatasetCatalog.get(VAL):
        image = cv2.imread(record["file_name"])
        # An odd size too: the graphs take any H, W (the predictor resizes as DefaultPredictor).
        for im in (image, cv2.resize(image, (101, 83))):
            scores += assert_same_detections(pytorch, deployed, im)
    # Detections were compared, and their scores are not flat (a trained model).
    assert len(scores) > 0 and np.ptp(scores) > 0.05


def _random_student():
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(STUDENT))
    cfg.merge_from_list(RANDOM_STUDENT_OPTS)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def test_onnx_graph_follows_the_proposal_count_of_each_image(tmp_path):
    """The traced graph takes the per-image proposal count from the image, not from the trace:
    on images with fewer proposals than the traced one, ONNX Runtime gives PyTorch's detections,
    and the int8 graph runs too."""
    cfg, model = _random_student()
    generator = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), generator=generator).float() for h, w in GRAPH_INPUT_SIZES]
    written = export_onnx(cfg, model, model.state_dict(), tmp_path, calibration=lambda: (x.numpy() for x in images))
    proposals = []
    model.roi_heads.register_forward_pre_hook(lambda _, args: proposals.append(len(args[2][0])))
    graph = DetectorGraph(model).eval()
    fp32, _ = load_runtime(written["onnx"])
    int8, _ = load_runtime(written["onnx_int8"])
    for image in images:
        with torch.no_grad():
            boxes, scores, classes = graph(image)
        got_boxes, got_scores, got_classes = fp32(image)
        assert len(boxes) > 0 and got_boxes.shape == boxes.shape
        assert torch.equal(got_classes, classes)
        assert torch.allclose(got_scores, scores, atol=SCORE_TOL, rtol=0)
        assert torch.allclose(got_boxes, boxes, atol=BOX_TOL_PX, rtol=0)
        q_boxes, q_scores, q_classes = int8(image)
        assert q_boxes.shape == (len(q_scores), 4) and q_classes.shape == q_scores.shape
    # The proposal counts differ, so some differ from the traced image's.
    assert len(set(proposals)) > 1, proposals


@pytest.mark.slow
def test_same_miss_rate_as_pytorch_and_int8_report(exported):
    cfg, written, out = exported["cfg"], exported["written"], exported["out"]
    threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    reference = evaluate(cfg, _pytorch_predictor(written, threshold).model, str(out / "eval_pt"), VAL)
    assert reference["All"] < 100.0
    for runtime in RUNTIMES:
        mr = evaluate(cfg, DeployedPredictor(written[runtime], score_threshold=0.0).model, str(out / f"eval_{runtime}"), VAL)
        assert mr.keys() == reference.keys()
        for setup, value in reference.items():
            assert value == pytest.approx(mr[setup], abs=MR_TOL, nan_ok=True), (runtime, setup)
    report = json.loads((out / "int8_miss_rate.json").read_text())
    assert report["dataset"] == VAL
    assert report["MR"]["onnx"]["All"] == pytest.approx(reference["All"], abs=MR_TOL)
    assert 0.0 <= report["MR"]["onnx_int8"]["All"] <= 100.0
    int8 = DeployedPredictor(written["onnx_int8"])
    assert int8.export_metadata.int8 and int8.export_metadata.format == "onnx"


@pytest.mark.slow
def test_student_yaml_is_plain_detectron2_with_relative_weights(exported):
    written = exported["written"]
    plain = get_cfg()
    plain.set_new_allowed(True)  # the pedestrian heads' keys (POOLER_NAME, IGNORE_REGIONS) are new to get_cfg()
    plain.merge_from_file(written["config"])
    assert plain.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert "DISTILL" not in plain.MODEL and "TEACHER" not in plain.MODEL and "EXPORT" not in plain
    assert plain.MODEL.WEIGHTS == "student.pth"
    assert plain.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(0.3)
    moved = exported["tmp"] / "moved"
    shutil.copytree(exported["out"], moved)
    cfg = load_student_config(str(moved / "student.yaml"))
    assert cfg.MODEL.WEIGHTS == str(moved / "student.pth")
    for path in written.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


@pytest.mark.slow
def test_clear_errors_for_foreign_files(exported, tmp_path, monkeypatch):
    import onnx

    source = exported["written"]["onnx"]
    proto = onnx.load(source)
    fields = json.loads(proto.metadata_props[0].value)
    fields["format_version"] = 0
    proto.metadata_props[0].value = json.dumps(fields)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    with pytest.raises(ValueError, match="old.onnx was exported with format version 0"):
        DeployedPredictor(str(old))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match=f"bare.onnx holds no {METADATA_KEY} metadata"):
        DeployedPredictor(str(tmp_path / "bare.onnx"))
    (tmp_path / "model.engine").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown exported model type '.engine'"):
        DeployedPredictor(str(tmp_path / "model.engine"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[deploy\]"):
        DeployedPredictor(source)


def test_metadata_round_trip_and_version_check():
    meta = ExportMetadata(format_version=1, hkd_d2_version="0.1.0", format="onnx", int8=False, input_format="BGR",
                          min_size_test=72, max_size_test=96, graph_score_thresh=0.01, score_thresh=0.3, num_classes=1)
    assert ExportMetadata.from_json(meta.to_json(), "x.onnx") == meta
    with pytest.raises(ValueError, match="x.onnx: malformed"):
        ExportMetadata.from_json(json.dumps({"format_version": 1, "surprise": 2}), "x.onnx")


@pytest.mark.slow
def test_video_tool_runs_the_onnx_student(exported, tmp_path):
    src, dst = tmp_path / "in.avi", tmp_path / "out.mp4"
    _write_video(src, 3, size=(96, 72))
    figures = video_main(["--exported", exported["written"]["onnx"], "--input", str(src), "--output", str(dst)])
    assert figures["frames"] == 3 and figures["detector_fps"] > 0
    assert figures["score_threshold"] == pytest.approx(0.3)  # the export's deployment threshold
    assert dst.is_file() and json.loads(Path(f"{dst}.json").read_text())["frames"] == 3

"""export_student: a plain student checkpoint + config that DefaultPredictor loads exactly."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor

from hkd_d2.checkpoint import load_detector_weights
from hkd_d2.export import export_formats, export_student, load_student_config

from ..hkd_helpers import build_hkd, hkd_cfg, student_keys, write_teacher
from ..conftest import REPO

TOOL = REPO / "tools" / "export_student.py"


@pytest.fixture
def distilled(tmp_path):
    """A distiller with channel adapters, saved as the trainer would (model + iteration)."""
    cfg = hkd_cfg(write_teacher(tmp_path, **{"MODEL.FPN.OUT_CHANNELS": 64}))
    model = build_hkd(cfg)
    assert any(k.startswith("distill_terms.") for k in model.state_dict())
    DetectionCheckpointer(model, str(tmp_path)).save("model_final", iteration=3)
    return cfg, model, str(tmp_path / "model_final.pth")


def test_exported_student_loads_exactly_and_predicts(distilled, tmp_path):
    cfg, model, weights = distilled
    weights_path, config_path = export_student(cfg, weights, str(tmp_path / "export"))

    saved = torch.load(weights_path)["model"]
    assert set(saved) == student_keys(cfg)
    assert not any(k.startswith("distill_terms.") for k in saved)

    student_cfg = load_student_config(config_path)
    assert student_cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert student_cfg.MODEL.TEACHER.CONFIG_FILE == "" and student_cfg.MODEL.TEACHER.WEIGHTS == ""
    assert student_cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME == "PyRoIAlign"
    assert student_cfg.MODEL.WEIGHTS == weights_path  # "student.pth" in the file, relative to it

    predictor = DefaultPredictor(student_cfg)
    load_detector_weights(predictor.model, weights_path)  # strict: raises on any key mismatch
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in predictor.model.state_dict().items())
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    instances = predictor(image)["instances"]
    assert instances.image_size == (64, 96) and instances.has("scores")


def test_foreign_keys_are_refused_and_nothing_written(distilled, tmp_path):
    cfg, model, weights = distilled
    state = dict(model.state_dict(), **{"teacher.something": torch.zeros(1)})
    torch.save({"model": state}, tmp_path / "odd.pth")
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="odd.pth.*teacher.something"):
        export_student(cfg, str(tmp_path / "odd.pth"), str(out))
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        export_student(cfg, str(tmp_path / "nope.pth"), str(out))


def test_command_line_tool(distilled, tmp_path):
    cfg, _, weights = distilled
    config_file = tmp_path / "hkd.yaml"
    config_file.write_text(cfg.dump())
    spec = importlib.util.spec_from_file_location("export_student_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "cli"
    tool.main(["--config-file", str(config_file), "--weights", weights, "--output", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["student.pth", "student.yaml"]


def test_unknown_format_is_refused(distilled, tmp_path):
    cfg, _, weights = distilled
    with pytest.raises(ValueError, match=r"Unknown export format\(s\) \['tensorrt'\]; choose from \['onnx', 'pytorch', 'torchscript'\]"):
        export_formats(cfg, weights, str(tmp_path / "export"), ["pytorch", "tensorrt"])
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("key,opts,hint", [
    ("DATASETS.TRAIN", [], "pass DATASETS.TRAIN \"('NAME',)\""),
    ("DATASETS.TEST", ["--eval-dataset", "script_only_val"], "pass --eval-dataset NAME"),
])
def test_a_data_set_only_the_training_program_knew_is_named_with_what_to_pass(distilled, tmp_path, key, opts, hint):
    """A run folder whose config names data sets only its training script registered: --int8 stops
    before writing anything, with one line naming the data set and what to pass instead."""
    from hkd_d2.tools import export_student as tool

    cfg, _, weights = distilled
    cfg.DATASETS.TRAIN = ("synthetic_citypersons_train",) if key != "DATASETS.TRAIN" else ("script_only_train",)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.dump())
    out = tmp_path / "int8"
    with pytest.raises(SystemExit) as stop:
        tool.main(["--config-file", str(config_file), "--weights", weights, "--output", str(out),
                   "--format", "onnx", "--int8", *opts])
    message = str(stop.value.code)
    assert "\n" not in message and "is not registered in this process" in message and hint in message
    assert "synthetic_citypersons_" in message and str(config_file) in message
    assert not out.exists()

"""train_net.py end to end on tiny generated data: train, resume, evaluate, clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.engine.setup import load_config

from .conftest import CONFIGS, REPO

# Tiny images and heads so that an R50-FPN trains 20 iterations on CPU in seconds.
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000",
]
TEACHER = str(CONFIGS / "synthetic" / "teacher_R50_FPN.yaml")
HKD = str(CONFIGS / "synthetic" / "hkd_R50_to_R18.yaml")


def tiny_config(path: Path, base: str) -> str:
    """``base`` with the TINY settings, dumped whole (a teacher is loaded from its own file)."""
    path.write_text(load_config(base, TINY).dump())
    return str(path)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """$DETECTRON2_DATASETS holding a tiny synthetic set (so nothing is generated on first use)."""
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic(
        root / "synthetic", 6, 3, SyntheticConfig(width=128, height=96, seed=1),
        formats=("citypersons", "caltech"), workers=0, extract_caltech=True,
    )
    return root


def train_net(datasets: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets))
    return subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600,
    )


def iterations(metrics_json: Path) -> list:
    lines = [json.loads(line) for line in metrics_json.read_text().splitlines() if line.strip()]
    return [m["iteration"] for m in lines if "total_loss" in m]


@pytest.mark.slow
def test_train_resume_and_evaluate(datasets, tmp_path):
    out = tmp_path / "teacher"
    run = train_net(datasets, "--config-file", TEACHER, *TINY, "SOLVER.MAX_ITER", "20", "OUTPUT_DIR", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert iterations(out / "metrics.json")[-1] == 19
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 19
    # warned once about the missing GPU, trained on cpu
    assert run.stderr.count("no GPU is available") == 1

    run = train_net(datasets, "--config-file", TEACHER, "--resume", *TINY, "SOLVER.MAX_ITER", "26",
                    "OUTPUT_DIR", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Starting training from iteration 20" in run.stdout + run.stderr
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 25

    evaluated = tmp_path / "eval"
    run = train_net(datasets, "--config-file", TEACHER, "--eval-only", *TINY,
                    "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(evaluated))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Reasonable" in run.stderr + run.stdout
    assert list(evaluated.rglob("*.json")), "no detections written"


def test_missing_config_file_is_named(datasets, tmp_path):
    run = train_net(datasets, "--config-file", str(tmp_path / "absent.yaml"))
    assert run.returncode != 0
    assert "Config file not found" in run.stderr and "absent.yaml" in run.stderr


def test_missing_weights_file_is_named(datasets, tmp_path):
    run = train_net(datasets, "--config-file", TEACHER, "--eval-only", *TINY,
                    "MODEL.WEIGHTS", str(tmp_path / "gone.pth"), "OUTPUT_DIR", str(tmp_path / "o"))
    assert run.returncode != 0
    assert "Weights file not found" in run.stderr and "gone.pth" in run.stderr


@pytest.mark.slow
def test_hkd_trains_resumes_and_keeps_the_teacher_out(datasets, tmp_path):
    teacher_yaml = tiny_config(tmp_path / "teacher.yaml", TEACHER)
    teacher = tmp_path / "teacher"
    run = train_net(datasets, "--config-file", teacher_yaml, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(teacher))
    assert run.returncode == 0, run.stderr[-3000:]

    out = tmp_path / "hkd"
    hkd = [*TINY, "MODEL.TEACHER.CONFIG_FILE", teacher_yaml,
           "MODEL.TEACHER.WEIGHTS", str(teacher / "model_final.pth"), "OUTPUT_DIR", str(out)]
    run = train_net(datasets, "--config-file", HKD, *hkd, "SOLVER.MAX_ITER", "4")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last_step = [m for m in metrics if "total_loss" in m][-1]
    assert all(k in last_step for k in ("loss_pd", "loss_rd", "loss_ld", "distill/scale", "distill/pd"))

    run = train_net(datasets, "--config-file", HKD, "--resume", *hkd, "SOLVER.MAX_ITER", "6")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Starting training from iteration 4" in run.stdout + run.stderr
    checkpoint = torch.load(out / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 5
    teacher_state = torch.load(teacher / "model_final.pth", weights_only=False)["model"]
    # the checkpoint is a student checkpoint: R18 backbone, no teacher tensor under any name
    assert "backbone.bottom_up.res2.0.conv3.weight" in teacher_state
    assert not any(k.endswith("res2.0.conv3.weight") for k in checkpoint["model"])
    assert not any("teacher" in k for k in checkpoint["model"])

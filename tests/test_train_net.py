"""train_net.py end to end on tiny generated data: train, resume, evaluate, clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic

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

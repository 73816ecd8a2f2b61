"""train_net.py end to end on tiny generated data: train, resume, evaluate, clear errors; two
machines on loopback, SIGTERM and --resume, the runaway-distillation guard."""
import contextlib
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest
import torch

from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.engine.setup import load_config
from hkd_d2.tools import pretrain

from ..conftest import CONFIGS, REPO
from ..hkd_helpers import write_teacher

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
STUDENT = str(CONFIGS / "synthetic" / "student_R18_FPN.yaml")


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


@pytest.mark.slow
def test_pretrained_student_fine_tunes_with_stem_res2_and_batchnorm_frozen(datasets, tmp_path):
    weights = tmp_path / "R-18.pkl"
    pretrain.main(["--depth", "18", "--out", str(weights), "--image-size", "32", "--num-train", "8", "--num-val", "4",
                   "--iters", "2", "--batch", "4"])
    config = CONFIGS / "synthetic" / "pretrained" / "t3_1_baseline_pretrained.yaml"
    out = tmp_path / "student"
    run = train_net(datasets, "--config-file", str(config), *TINY, "MODEL.WEIGHTS", str(weights),
                    "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "OUTPUT_DIR", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    with open(weights, "rb") as f:
        saved = pickle.load(f)["model"]
    final = torch.load(out / "model_final.pth", weights_only=False)["model"]
    unchanged = {k for k, v in saved.items() if torch.equal(final["backbone.bottom_up." + k], torch.from_numpy(v))}
    frozen = {k for k in saved if k.startswith(("stem.", "res2.")) or ".norm." in k}
    assert frozen <= unchanged  # FREEZE_AT 2 and FrozenBN keep the pre-trained values
    assert "res5.1.conv2.weight" not in unchanged  # the later stages are fine-tuned


def test_missing_config_file_is_named(datasets, tmp_path):
    run = train_net(datasets, "--config-file", str(tmp_path / "absent.yaml"))
    assert run.returncode != 0
    assert "Config file not found" in run.stderr and "absent.yaml" in run.stderr


def test_missing_weights_file_is_named(datasets, tmp_path):
    run = train_net(datasets, "--config-file", TEACHER, "--eval-only", *TINY,
                    "MODEL.WEIGHTS", str(tmp_path / "gone.pth"), "OUTPUT_DIR", str(tmp_path / "o"))
    assert run.returncode != 0
    assert "Weights file not found" in run.stderr and "gone.pth" in run.stderr


def curve(datasets: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets))
    return subprocess.run([sys.executable, "-m", "hkd_d2.tools.curve", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_curve_evaluates_every_checkpoint_of_a_real_run_once(datasets, tmp_path):
    out = tmp_path / "student"
    run = train_net(datasets, "--config-file", STUDENT, *TINY, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                    "OUTPUT_DIR", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    run = curve(datasets, str(out), "--label", "student", "--out", str(tmp_path / "curve"))
    assert run.returncode == 0, run.stderr[-3000:]
    cached = json.loads((out / "curve.json").read_text())
    # model_0000001.pth (2 iterations done), model_0000003.pth and model_final.pth (both 4)
    assert sorted(cached) == ["2", "4"]
    # the tiny validation set has no Reasonable pedestrian: every setup is evaluated, undefined
    assert all(set(mr) >= {"Reasonable", "All"} for mr in cached.values())
    summary = json.loads((tmp_path / "curve.json").read_text())
    assert summary["groups"]["student"]["2"]["n"] == 0
    assert (tmp_path / "curve.png").stat().st_size > 0
    again = curve(datasets, str(out), "--label", "student", "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "evaluating" not in again.stdout + again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["groups"] == summary["groups"]


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
    assert all(k in last_step for k in ("loss_pd", "loss_rd", "loss_ld", "distill/scale_loss_pd", "distill/pd"))

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
    # the curve of a distillation run evaluates its student alone
    run = curve(datasets, str(out), "--out", str(tmp_path / "curve"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(json.loads((out / "curve.json").read_text())) == ["6"]


# --- several processes, signals, the runaway guard: train_net.py started with Popen ---------------

# CPU only, whatever the machine has: launch() picks NCCL (and CUDA devices) where a GPU is visible.
CPU = {"CUDA_VISIBLE_DEVICES": ""}
# Generous bounds on a loaded 2-core machine; no assertion depends on them.
DEADLINE_S = 480
POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_train_net(datasets: Path, log: Path, *args: str, module: str = "") -> subprocess.Popen:
    """train_net.py (or ``python -m module``) in its own process group, output to ``log``."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), **CPU)
    program = ["-m", module] if module else [str(REPO / "train_net.py")]
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *program, *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def killed_at_exit(*procs: subprocess.Popen) -> Iterator[None]:
    """Kill the process groups of ``procs`` that still run when the block ends (a failure)."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(procs: Sequence[subprocess.Popen], logs: Sequence[Path],
             until: Optional[Callable[[], bool]] = None) -> None:
    """Poll until ``until()`` holds (without ``until``: until every process ended). Fail when a
    process ends first (without ``until``: ends with an error while others run, which would wait
    for it forever) or after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not (until() if until else all(p.poll() is not None for p in procs)):
        failed = [p for p in procs if p.poll() is not None and (until or p.returncode != 0)]
        if failed:
            pytest.fail(f"exit {failed[0].returncode} first:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
        if time.monotonic() > deadline:
            pytest.fail(f"still running after {DEADLINE_S} s:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
        time.sleep(POLL_S)


@pytest.mark.slow
def test_two_machines_on_loopback_end_with_identical_weights(datasets, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    outs = [tmp_path / f"machine{rank}" for rank in (0, 1)]
    logs = [tmp_path / f"machine{rank}.out" for rank in (0, 1)]
    procs = [
        start_train_net(datasets, logs[rank], "--config-file", STUDENT, "--num-gpus", "1", "--num-machines", "2",
                        "--machine-rank", str(rank), "--dist-url", url, *TINY, "MODEL.DEVICE", "cpu",
                        "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(outs[rank]),
                        module="tests.rank_weights_probe")
        for rank in (0, 1)
    ]
    with killed_at_exit(*procs):
        wait_for(procs, logs)
    assert [p.returncode for p in procs] == [0, 0]
    assert "World size: 2" in (outs[0] / "log.txt").read_text()
    start = [torch.load(outs[r] / f"rank{r}_start.pth") for r in (0, 1)]
    end = [torch.load(outs[r] / f"rank{r}_end.pth") for r in (0, 1)]
    final = torch.load(outs[0] / "model_final.pth", weights_only=False)
    assert final["iteration"] == 1 and not (outs[1] / "model_final.pth").exists()  # saved by rank 0 only
    assert set(end[0]) == set(end[1]) == set(final["model"]) == set(start[0])
    # each rank drew its own initial weights (SEED -1); DDP started both from rank 0's ...
    assert all(torch.equal(start[0][k], start[1][k]) for k in start[0])
    # ... both trained (on different images) and ended equal, equal to rank 0's checkpoint
    assert all(torch.equal(end[0][k], end[1][k]) for k in end[0])
    assert all(torch.equal(end[1][k], final["model"][k]) for k in end[1])
    changed = [k for k in start[0] if not torch.equal(start[0][k], end[0][k])]
    assert "backbone.fpn_output2.weight" in changed and "roi_heads.box_predictor.cls_score.weight" in changed


def hkd_args(tmp_path: Path, out: Path, *opts: str) -> List[str]:
    """The synthetic HKD config, tiny, on cpu, with a randomly initialised teacher (nothing trained)."""
    teacher = write_teacher(tmp_path)
    return ["--config-file", HKD, *TINY, "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()",
            *(x for kv in teacher.items() for x in kv), "OUTPUT_DIR", str(out), *opts]


# Logged by LossBalanceHook after the first iteration of every distillation run: by then every
# hook's before_train has run, so StopOnSignal handles a SIGTERM.
FIRST_ITERATION = "First iteration: detection loss"


def logged(out: Path, line: str) -> bool:
    log = out / "log.txt"
    return log.is_file() and line in log.read_text()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_resume_finishes(datasets, tmp_path):
    out = tmp_path / "hkd"
    log = tmp_path / "first.out"
    # MAX_ITER is out of reach: the run ends by the signal only; no periodic checkpoint before it
    args = hkd_args(tmp_path, out, "SOLVER.CHECKPOINT_PERIOD", "1000")
    proc = start_train_net(datasets, log, *args, "SOLVER.MAX_ITER", "500")
    with killed_at_exit(proc):
        wait_for([proc], [log], until=lambda: logged(out, FIRST_ITERATION))
        proc.send_signal(signal.SIGTERM)
        wait_for([proc], [log])  # a nonzero exit here is checked below
    text = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    stopped = re.search(r"Training stopped by SIGTERM after iteration (\d+); saved (\S+)\. "
                        r"Run again with --resume", text)
    assert stopped, text[-3000:]
    assert "Traceback" not in text
    iteration, saved = int(stopped.group(1)), Path(stopped.group(2))
    assert saved == out / f"model_{iteration:07d}.pth"
    assert torch.load(saved, weights_only=False)["iteration"] == iteration
    assert (out / "last_checkpoint").read_text() == saved.name
    assert sorted(p.name for p in out.glob("*.pth")) == [saved.name]  # the signal's checkpoint only

    end = iteration + 2
    run = train_net(datasets, "--resume", *args, "SOLVER.MAX_ITER", str(end))
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Starting training from iteration {iteration + 1}" in run.stdout + run.stderr
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == end - 1
    assert iterations(out / "metrics.json")[-1] == end - 1


@pytest.mark.slow
def test_runaway_distillation_stops_naming_the_term_and_keeps_the_last_good_checkpoint(datasets, tmp_path):
    out = tmp_path / "hkd"
    # The warm-up scale is 0 at iteration 0 (a good iteration, checkpointed), 0.5 at 1, 1 from 2:
    # loss_pd is a runaway from iteration 1 and stops training after 2 runaway iterations.
    run = train_net(datasets, *hkd_args(tmp_path, out, "MODEL.DISTILL.PYRAMID.WEIGHT", "1e30",
                                        "MODEL.DISTILL.WARMUP_ITERS", "2", "MODEL.DISTILL.MAX_RATIO_ITERS", "2",
                                        "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_ITER", "10"))
    assert run.returncode == 1  # an uncaught exception's status, its traceback on stderr
    error = re.search(r"RunawayDistillationError: Distillation term (\S+) = (\S+) is (\S+) x the detection loss "
                      r"\(> MODEL.DISTILL.MAX_RATIO 1000\) for 2 consecutive iterations, up to iteration 2", run.stderr)
    assert error, run.stderr[-3000:]
    name, value, ratio = error.group(1), float(error.group(2)), float(error.group(3))
    assert name == "loss_pd" and value > 1e29 and ratio > 1e27
    # iteration 1 (over the ratio) was saved before the guard stopped; --resume takes iteration 0's
    assert (f"{out / 'model_0000001.pth'} was saved after the runaway began, so last_checkpoint points again "
            f"at {out / 'model_0000000.pth'}, the last good one") in run.stderr
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert torch.load(out / "model_0000000.pth", weights_only=False)["iteration"] == 0
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000000.pth", "model_0000001.pth"]

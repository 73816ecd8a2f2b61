#!/usr/bin/env python
"""Fault trial (not run in CI): kill -9 training at random moments, resume, check the checkpoints.

Each trial starts ``train_net.py`` in a fresh OUTPUT_DIR and kills its process group with SIGKILL
either a random delay after training starts or (every ``--aim-every``-th trial) right as it starts writing
``model_final.pth``; then it runs ``--resume`` until training ends. A trial succeeds when the
run reaches SOLVER.MAX_ITER with a loadable ``model_final.pth`` of the last iteration. Every
``model_*.pth`` / ``last_checkpoint`` is checked afterwards; unreadable ones are counted as
truncated files under a final name.

    DETECTRON2_DATASETS=/path/with/synthetic python tools/fault_trial.py --trials 20 --out /tmp/trial
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hkd_d2.checkpoint import CheckpointFileError, check_checkpoint_file  # noqa: E402

# A tiny R18 detector on 128x96 images: a few seconds per iteration on a CPU.
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
]
FINAL_SAVE_LINE = "Saving checkpoint to {}"
TRAINING_STARTED_LINE = "Starting training from iteration"
POLL_S = 0.02


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", required=True, help="folder for the trials' OUTPUT_DIRs and report.json")
    p.add_argument("--config-file", default=str(REPO / "configs/synthetic/teacher_R50_FPN.yaml"))
    p.add_argument("--max-iter", type=int, default=6)
    p.add_argument("--checkpoint-period", type=int, default=2)
    p.add_argument("--max-delay", type=float, default=20.0,
                   help="random kills happen within this many seconds after training starts")
    p.add_argument("--aim-every", type=int, default=3, help="every N-th trial is killed at the final save")
    p.add_argument("--max-resumes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="trials run at the same time")
    return p.parse_args()


def command(args, out: Path, resume: bool):
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", args.config_file]
    cmd += ["--resume"] if resume else []
    return cmd + TINY + [
        "SOLVER.MAX_ITER", str(args.max_iter), "SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period),
        "OUTPUT_DIR", str(out),
    ]


def start(args, out: Path, resume: bool) -> subprocess.Popen:
    log = open(out / ("resume.out" if resume else "first.out"), "ab")
    return subprocess.Popen(command(args, out, resume), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_at(proc: subprocess.Popen, out: Path, delay: float, aim_final: bool) -> str:
    """SIGKILL ``proc``'s group ``delay`` s after training starts, or after the final save starts."""
    marker = FINAL_SAVE_LINE.format(out / "model_final.pth") if aim_final else TRAINING_STARTED_LINE
    while proc.poll() is None:
        log = out / "log.txt"
        if log.is_file() and marker in log.read_text(errors="replace"):
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"{delay:.2f} s after the final save started" if aim_final else f"{delay:.1f} s into training"
        time.sleep(POLL_S)
    return f"not killed (ended with {proc.returncode})"


def truncated_files(out: Path) -> list:
    bad = []
    for path in sorted(out.glob("model_*.pth")):
        try:
            check_checkpoint_file(str(path))
        except (CheckpointFileError, FileNotFoundError):
            bad.append(path.name)
    tag = out / "last_checkpoint"
    if tag.is_file() and not (out / tag.read_text().strip()).is_file():
        bad.append("last_checkpoint")
    return bad


def trial(args, index: int, delay: float) -> dict:
    out = Path(args.out) / f"trial_{index:02d}"
    out.mkdir(parents=True, exist_ok=True)
    aim_final = args.aim_every > 0 and index % args.aim_every == 0
    killed = kill_at(start(args, out, resume=False), out, delay, aim_final)
    resumes, rc = 0, None
    while resumes < args.max_resumes and rc != 0:
        resumes += 1
        rc = start(args, out, resume=True).wait()
    final_ok, final_iter = False, None
    try:
        final_iter = check_checkpoint_file(str(out / "model_final.pth")).get("iteration")
        final_ok = final_iter == args.max_iter - 1
    except (CheckpointFileError, FileNotFoundError):
        pass
    return {"trial": index, "killed": killed, "resumes": resumes, "resume_rc": rc,
            "final_iteration": final_iter, "resumed_to_max_iter": bool(rc == 0 and final_ok),
            "truncated_under_final_name": truncated_files(out),
            "temporary_files_left": sorted(p.name for p in out.glob(".*.tmp"))}


def main():
    args = parse_args()
    rng = random.Random(args.seed)
    aimed = {i for i in range(args.trials) if args.aim_every > 0 and i % args.aim_every == 0}
    delays = [rng.uniform(0.0, 0.5) if i in aimed else rng.uniform(0.0, args.max_delay) for i in range(args.trials)]

    def run(i):
        result = trial(args, i, delays[i])
        print(json.dumps(result), flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run, range(args.trials)))
    summary = {
        "trials": len(results),
        "resumed_to_max_iter_with_intact_final": sum(r["resumed_to_max_iter"] for r in results),
        "killed_at_final_save": sum("final save" in r["killed"] for r in results),
        "killed_during_training": sum("into training" in r["killed"] for r in results),
        "truncated_files_under_final_names": sum(len(r["truncated_under_final_name"]) for r in results),
        "temporary_files_left": sum(len(r["temporary_files_left"]) for r in results),
    }
    (Path(args.out) / "report.json").write_text(json.dumps({"summary": summary, "trials": results}, indent=1))
    print(json.dumps(summary))
    return 0 if summary["resumed_to_max_iter_with_intact_final"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

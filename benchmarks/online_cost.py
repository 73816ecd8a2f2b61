"""Cost per training step of online distillation (the teacher trained in the same run), on this CPU.

    python benchmarks/online_cost.py [--steps 5] [--seed 0]

Whole training steps (forward + backward + SGD, :func:`distill_cost.step_seconds`) of the
synthetic configs (240x320, 2 images, random weights and images: the cost does not depend on
them): the R18-FPN student alone, the R50-FPN teacher alone, HKD under a frozen teacher
(``hkd_R50_to_R18``) and HKD under a teacher trained in the run (``online/online_teacher_hkd``).
Times are medians over ``--steps`` steps after one warm-up step, of this process's CPU seconds (run
it with OMP_NUM_THREADS=1: then they do not count time lost to other processes) and of wall seconds.
"""
import argparse
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from detectron2.modeling import build_model

from distill_cost import CONFIGS, step_seconds
from hkd_d2.engine import load_config


def step_configs(teacher_weights: str) -> Dict[str, Tuple[str, List[str]]]:
    """name -> (config under configs/synthetic, its options); the student pools as HKD's does."""
    return {
        "student alone": ("student_R18_FPN.yaml", ["MODEL.ROI_BOX_HEAD.POOLER_NAME", "PyRoIAlign"]),
        "teacher alone": ("teacher_R50_FPN_PyRoIAlign.yaml", []),
        "HKD, frozen teacher": ("hkd_R50_to_R18.yaml", ["MODEL.TEACHER.WEIGHTS", teacher_weights]),
        "HKD, online teacher": ("online/online_teacher_hkd.yaml", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        teacher_cfg = load_config(str(CONFIGS / "teacher_R50_FPN_PyRoIAlign.yaml"), ["MODEL.DEVICE", "cpu"])
        weights = str(Path(tmp) / "teacher.pth")
        torch.save({"model": build_model(teacher_cfg).state_dict()}, weights)
        for name, (path, opts) in step_configs(weights).items():
            cpu, wall = step_seconds(str(CONFIGS / path), opts, args.steps)
            print(f"step  {name:22s} {cpu:7.3f} s CPU, {wall:7.3f} s wall")


if __name__ == "__main__":
    main()

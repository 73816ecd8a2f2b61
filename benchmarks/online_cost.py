"""Cost per training step of online distillation (the teacher trained in the same run), on this CPU.

    python benchmarks/online_cost.py [--steps 5] [--seed 0]

Whole training steps (forward + backward + SGD, :func:`distill_cost.step_seconds`) of the
synthetic configs (240x320, 2 images, random weights and images: the cost does not depend on
them): the R18-FPN student alone, the R50-FPN teacher alone, HKD under a frozen teacher
(``hkd_R50_to_R18``) and HKD under a teacher trained in the run (``online/online_teacher_hkd``).
Times are medians over ``--steps`` steps after one warm-up step, of this process's CPU seconds (run
it with OMP_NUM_THREADS=1: then they do not count time lost to other processes) and of wall seconds.
"""
import tempfile
from typing import Dict, List, Tuple

from distill_cost import CONFIGS, random_teacher_file, step_arguments, step_seconds


def step_configs(teacher_weights: str) -> Dict[str, Tuple[str, List[str]]]:
    """name -> (config under configs/synthetic, its options); the student pools as HKD's does."""
    return {
        "student alone": ("student_R18_FPN.yaml", ["MODEL.ROI_BOX_HEAD.POOLER_NAME", "PyRoIAlign"]),
        "teacher alone": ("teacher_R50_FPN_PyRoIAlign.yaml", []),
        "HKD, frozen teacher": ("hkd_R50_to_R18.yaml", ["MODEL.TEACHER.WEIGHTS", teacher_weights]),
        "HKD, online teacher": ("online/online_teacher_hkd.yaml", []),
    }


def main() -> None:
    args = step_arguments(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_teacher_file(tmp, "teacher_R50_FPN_PyRoIAlign.yaml")
        for name, (path, opts) in step_configs(weights).items():
            cpu, wall = step_seconds(str(CONFIGS / path), opts, args.steps)
            print(f"step  {name:22s} {cpu:7.3f} s CPU, {wall:7.3f} s wall")


if __name__ == "__main__":
    main()

"""The demo's cost model: planned seconds per stage, for the stage banners and the overall ETA.

Figures are measured on an idle 2-core CPU with the ``configs/synthetic`` detectors at the demo's
input size (0.8x the generated images); they only shape the plan (the ETA rescales them by how fast the finished stages went).
"""
from typing import Dict, Sequence

__all__ = ["TRAIN_COST", "EVAL_COST", "OTHER_COST", "stage_plan"]

# Training cost, seconds per iteration, by kind of run ("student" = any student trained alone).
TRAIN_COST = {"teacher": 0.58, "student": 0.29, "hkd": 0.40}
# Evaluation cost per validation image (seconds).
EVAL_COST = {"teacher": 0.11, "student": 0.07, "hkd": 0.07}
# Fixed costs of the other stages (seconds).
OTHER_COST = {"data": 5.0, "complexity": 15.0, "report": 10.0}


def stage_plan(students: Sequence[str], seeds: Sequence[int], teacher_iters: int, student_iters: int,
               num_val: int) -> Dict[str, float]:
    """{stage name: planned seconds} in run order: data, teacher, per seed each student alone
    (``students``: display names) then the distilled student, complexity, report."""
    def run_cost(kind: str, iters: int) -> float:
        return TRAIN_COST[kind] * iters + EVAL_COST[kind] * num_val

    plan = {"data": OTHER_COST["data"], "teacher": run_cost("teacher", teacher_iters)}
    for seed in seeds:
        for name in students:
            plan[f"{name} seed {seed}"] = run_cost("student", student_iters)
        plan[f"hkd seed {seed}"] = run_cost("hkd", student_iters)
    plan["complexity"] = OTHER_COST["complexity"]
    plan["report"] = OTHER_COST["report"]
    return plan

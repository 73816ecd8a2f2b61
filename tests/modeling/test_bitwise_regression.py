"""Bit-for-bit guard of the distiller's numerics: every distillation term on, three SGD steps.

A tiny distiller with every term (HKD PD/RD/LD, Chen 2017, FGFI, PKD, GKD) trains three SGD steps
at a fixed seed, with Detectron2's pooler and with PyRoIAlign, with the teacher's FPN as wide as
the student's and twice as wide. Every loss value (in the order the model returns them), every
term statistic and schedule factor, and a hash of all the student's tensors after the last step
are compared with ``bitwise_golden.json`` exactly.

Exact comparison needs the same arithmetic: the file records the environment it was written in
(torch, Detectron2, CPU capability); elsewhere values are compared to a relative 1e-3 and the
hash is not compared. Regenerate it (only for an intended numerical change) with

    python -m tests.modeling.test_bitwise_regression --write
"""
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import detectron2
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from ..hkd_helpers import batch, build_hkd, hkd_cfg, write_teacher

GOLDEN = Path(__file__).with_name("bitwise_golden.json")
STEPS = 3
ALL_TERMS = ["PyramidDistill", "RegionDistill", "LogitDistill", "Chen2017Distill", "FGFIDistill", "PKDDistill",
             "GKDDistill"]
# (pooler of student and teacher, teacher FPN channels; the student's are 32).
CASES = {
    "level_pooler_equal_width": ("LevelROIPooler", 32),
    "level_pooler_wider_teacher": ("LevelROIPooler", 64),
    "pyroialign_equal_width": ("PyRoIAlign", 32),
    "pyroialign_wider_teacher": ("PyRoIAlign", 64),
}
# Non-default weights and schedules, so that weighting, warm-up, start iteration and
# attenuation all act within the three steps.
OVERRIDES = {
    "MODEL.DISTILL.TERMS": ALL_TERMS,
    "MODEL.DISTILL.WARMUP_ITERS": 2,
    "MODEL.DISTILL.PYRAMID.WEIGHT": 0.5,
    "MODEL.DISTILL.REGION.WEIGHT": 0.1,
    "MODEL.DISTILL.LOGIT.WEIGHT": 0.05,
    "MODEL.DISTILL.CHEN2017.WEIGHT": 0.7,
    "MODEL.DISTILL.FGFI.START_ITER": 1,
    "MODEL.DISTILL.GKD.WEIGHT": 0.3,
    "SOLVER.MAX_ITER": 4,
    "SOLVER.BASE_LR": 0.02,
}


def environment() -> Dict[str, str]:
    """What decides the bits of CPU float arithmetic here."""
    return {
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def state_hash(state: Dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _float(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def step_record(model, losses: Dict[str, torch.Tensor]) -> Dict:
    """One step's losses (in order) and the model's term statistics and schedule factors."""
    stats = {k: _float(v) for k, v in model.last_losses.stats.items()}
    stats.update({f"distill/scale_{k}": float(v) for k, v in model.last_losses.scales.items()})
    return {"losses": [[k, _float(v)] for k, v in losses.items()], "stats": stats}


def run_case(tmp_path: Path, pooler: str, teacher_channels: int) -> Dict:
    """Train the all-terms distiller STEPS steps on one thread; its per-step record and final hash."""
    teacher = write_teacher(tmp_path, seed=1, **{"MODEL.FPN.OUT_CHANNELS": teacher_channels,
                                                 "MODEL.ROI_BOX_HEAD.POOLER_NAME": pooler})
    cfg = hkd_cfg(teacher, **{**OVERRIDES, "MODEL.ROI_BOX_HEAD.POOLER_NAME": pooler})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_hkd(cfg, seed=0)
        optimizer = build_optimizer(cfg, model)
        model.train()
        torch.manual_seed(123)
        steps: List[Dict] = []
        with EventStorage():
            for it in range(STEPS):
                model.distill_iter = it
                losses = model(batch(seed=it))
                steps.append(step_record(model, losses))
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
        state = model.state_dict()
        return {"steps": steps, "state_sha256": state_hash(state),
                "state_sum": float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))}
    finally:
        torch.set_num_threads(threads)


def _close(actual: float, expected: float, exact: bool) -> bool:
    return actual == expected if exact else actual == pytest.approx(expected, rel=1e-3, abs=1e-6)


def _compare(case: str, actual: Dict, golden: Dict, exact: bool) -> List[str]:
    problems = []
    for it, (a, g) in enumerate(zip(actual["steps"], golden["steps"])):
        if [k for k, _ in a["losses"]] != [k for k, _ in g["losses"]]:
            problems.append(f"{case} step {it}: losses {[k for k, _ in a['losses']]} vs {[k for k, _ in g['losses']]}")
        for (name, value), (_, expected) in zip(a["losses"], g["losses"]):
            if not _close(value, expected, exact):
                problems.append(f"{case} step {it}: {name} {value!r} vs {expected!r}")
        missing = sorted(set(g["stats"]) - set(a["stats"]))
        if missing:
            problems.append(f"{case} step {it}: statistics missing {missing}")
        for name, expected in g["stats"].items():
            if name in a["stats"] and not _close(a["stats"][name], expected, exact):
                problems.append(f"{case} step {it}: {name} {a['stats'][name]!r} vs {expected!r}")
    if exact and actual["state_sha256"] != golden["state_sha256"]:
        problems.append(f"{case}: weights after {STEPS} steps differ (sum {actual['state_sum']!r} "
                        f"vs {golden['state_sum']!r})")
    return problems


@pytest.fixture(scope="module")
def golden() -> Dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_steps_with_every_term_match_the_golden_values_bit_for_bit(case, golden, tmp_path):
    actual = run_case(tmp_path, *CASES[case])
    exact = golden["environment"] == environment()
    problems = _compare(case, actual, golden["cases"][case], exact)
    assert not problems, "\n".join(problems)


def write_golden(tmp_path: Path) -> None:
    cases = {}
    for case, (pooler, channels) in sorted(CASES.items()):
        folder = tmp_path / case
        folder.mkdir(parents=True)
        cases[case] = run_case(folder, pooler, channels)
    GOLDEN.write_text(json.dumps({"environment": environment(), "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.modeling.test_bitwise_regression --write")
    with tempfile.TemporaryDirectory() as tmp:
        write_golden(Path(tmp))
    print(f"wrote {GOLDEN}")

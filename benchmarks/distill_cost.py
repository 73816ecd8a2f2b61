"""Cost per training step of SRM, BKD and ISL's scoring, on this machine's CPU.

    python benchmarks/distill_cost.py [--steps 5] [--seed 0]

1. Whole training steps (forward + backward + SGD) of the synthetic configs (240x320, 2 images,
   random weights and images: the cost does not depend on them): the student alone
   (table3/t3_1_baseline), SRM alone (literature/srm), BKD alone (literature/bkd), HKD row 7.
2. SRM's term alone (forward + backward) on FPN maps of the synthetic size and of CityPersons'
   (1024x2048, 256 channels, 1 image), with the bytes autograd keeps for its backward (the memory
   the term adds to a step) and the bytes of the teacher's codes (transient, no gradient).
3. ISL: the time to score one training image (the student's detection loss, no gradient).

Times are medians over ``--steps`` steps after one warm-up step, of this process's CPU seconds
(run it with OMP_NUM_THREADS=1: then they do not count time lost to other processes) and of
wall-clock seconds.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hkd_d2.engine import load_config
from hkd_d2.engine.curriculum import detection_loss, frozen_snapshot
from hkd_d2.modeling.distill.srm import SRMDistill
from hkd_d2.modeling.recorders import ModelOutputs

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
STEP_CONFIGS = {
    "student alone (t3_1)": "table3/t3_1_baseline.yaml",
    "HKD row 7 (t3_7)": "table3/t3_7_pd_rd_ld.yaml",
    "SRM alone": "literature/srm.yaml",
    "BKD alone": "literature/bkd.yaml",
}
# FPN level -> stride, and the levels SRM codes.
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _median_seconds(step: Callable[[], None], steps: int) -> Tuple[float, float]:
    """Median CPU and wall-clock seconds of ``step``."""
    step()
    cpu, wall = [], []
    for _ in range(steps):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return statistics.median(cpu), statistics.median(wall)


def _batch(height: int, width: int, n: int = 2):
    inputs = []
    for i in range(n):
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.tensor([[40.0 + 60 * i, 60.0, 80.0 + 60 * i, 160.0]]))
        inst.gt_classes = torch.zeros(1, dtype=torch.int64)
        inst.gt_ignore = torch.zeros(1, dtype=torch.bool)
        inputs.append({"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8), "instances": inst,
                       "height": height, "width": width})
    return inputs


def step_seconds(config_file: str, opts: List[str], steps: int) -> Tuple[float, float]:
    """Median (CPU, wall) seconds per whole training step (forward, backward, SGD) of a config on
    a generated 240x320 batch of 2 images."""
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", *opts])
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    data = _batch(240, 320)

    def step():
        losses = model(data)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    with EventStorage():
        return _median_seconds(step, steps)


def step_arguments(doc: str) -> argparse.Namespace:
    """The command line of a cost benchmark (``--steps``, ``--seed``), with torch's seed set."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    return args


def random_teacher_file(folder: str, config_name: str) -> str:
    """Write a randomly initialised teacher of ``configs/synthetic/<config_name>`` into ``folder``; its path."""
    teacher_cfg = load_config(str(CONFIGS / config_name), ["MODEL.DEVICE", "cpu"])
    weights = str(Path(folder) / "teacher.pth")
    torch.save({"model": build_model(teacher_cfg).state_dict()}, weights)
    return weights


def training_steps(steps: int, teacher_weights: str) -> Dict[str, Tuple[float, float]]:
    """Median (CPU, wall) seconds per whole training step of each of STEP_CONFIGS."""
    return {name: step_seconds(str(CONFIGS / path), ["MODEL.TEACHER.WEIGHTS", teacher_weights], steps)
            for name, path in STEP_CONFIGS.items()}


def srm_term(height: int, width: int, channels: int, steps: int, images: int) -> Dict:
    """SRM's forward + backward alone on maps of an image of ``height`` x ``width``."""
    cfg = load_config(str(CONFIGS / "literature" / "srm.yaml"))
    shapes = {f: ShapeSpec(channels=channels, stride=s) for f, s in STRIDES.items()}
    term = SRMDistill(cfg, shapes, shapes)
    sizes = {f: (images, channels, height // s, width // s) for f, s in STRIDES.items()}
    student = {f: torch.randn(size, requires_grad=True) for f, size in sizes.items()}
    teacher = {f: torch.randn(size) for f, size in sizes.items()}
    ctx = SimpleNamespace(student=ModelOutputs("student", features=student),
                          teacher=ModelOutputs("teacher", features=teacher), stats={})
    saved: Dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        term(ctx)["loss_srm"].backward()
    codes = sum(term.codebook.coders[f].num_codewords * n * h * w * 4 for f, (n, _, h, w) in sizes.items())
    cpu, wall = _median_seconds(lambda: term(ctx)["loss_srm"].backward(), steps)
    return {"cpu": cpu, "wall": wall, "saved_MiB": sum(saved.values()) / 2**20, "teacher_codes_MiB": codes / 2**20,
            "codewords": term.codebook.coders["p3"].num_codewords}


def isl_score_seconds(steps: int) -> Tuple[float, float]:
    """(CPU, wall) seconds to score one 240x320 image by the student's detection loss."""
    cfg = load_config(str(CONFIGS / "table3" / "t3_1_baseline.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    data = _batch(240, 320, n=1)
    with frozen_snapshot(model, seed=0):
        return _median_seconds(lambda: detection_loss(model, None, data), steps)


def main() -> None:
    args = step_arguments(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_teacher_file(tmp, "teacher_R50_FPN.yaml")
        for name, (cpu, wall) in training_steps(args.steps, weights).items():
            print(f"step  {name:22s} {cpu:7.3f} s CPU, {wall:7.3f} s wall")
    for label, (h, w, c, n) in {"synthetic 240x320, 64 ch, 2 images": (240, 320, 64, 2),
                                "CityPersons 1024x2048, 256 ch, 1 image": (1024, 2048, 256, 1)}.items():
        r = srm_term(h, w, c, max(1, args.steps // 2), n)
        print(f"SRM term alone, {label}: K={r['codewords']}, forward+backward {r['cpu']:.3f} s CPU "
              f"({r['wall']:.3f} s wall), "
              f"{r['saved_MiB']:.0f} MiB kept for backward, {r['teacher_codes_MiB']:.0f} MiB teacher codes")
    cpu, wall = isl_score_seconds(args.steps)
    print(f"ISL scoring, one 240x320 image (detection loss): {cpu:.3f} s CPU ({wall:.3f} s wall)")


if __name__ == "__main__":
    main()

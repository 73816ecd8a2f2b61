"""End-to-end demo on generated data: teacher, students alone, HKD-distilled student, Table-1-style report.

Stages (one after another, in this process, with the project's configs and Trainer):

1. generate a small synthetic CityPersons-format data set (unless present);
2. train the R50-FPN teacher that ``--hkd-config`` names (``MODEL.TEACHER.CONFIG_FILE``) and
   evaluate it;
3. per seed: train each R18-FPN student alone (``--student-configs``) and evaluate it;
4. per seed: train the R18-FPN student with distillation from that teacher (``--hkd-config`` with
   ``MODEL.TEACHER.WEIGHTS`` = the teacher's ``model_final.pth``), export and evaluate it;
5. parameters, backbone GMACs and latency at 600x800 of each detector;
6. ``report.md`` + ``report.json``: the paper's Table 1 shape, the paired gain of the distilled
   student over the best student alone (same seed = same initialisation and data order; mean,
   95% t interval, wins/losses) with the numeric environment it was measured in (torch threads,
   CPU, cores, torch version, device: :mod:`hkd_d2.tools.environment`), the fraction of the
   teacher-student gap closed, ``mr_fppi.png`` and ``detections.jpg``.

Every knob (configs, data size, image size, schedules, seeds) is a command-line option of ``tools/demo.py``.
"""
import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from ..data import SyntheticConfig, generate_synthetic, register_pedestrian_dataset
from ..data.register import SYNTHETIC_DEFAULTS
from ..engine.setup import load_config
from ..evaluation import plot_mr_fppi
from ..export import export_student
from ..modeling.teacher import resolve_path
from .complexity import backbone_gmacs, count_parameters
from .demo_plan import stage_plan
from .environment import numeric_environment
from .demo_report import (SETUP_COLUMNS, STUDENT_PREFIX, best_student, gap_table, paired_summary, render_report,
                          row_name, student_kind, summarize)
from .inference import build_predictor, model_inputs
from .progress import StageClock, format_duration
from .report import write_json, write_text
from .runs import build_run_config, curves_from_output, evaluate, teacher_config, train
from .timing import time_call
from .visualize import draw_detections

__all__ = ["parse_args", "check_configs", "run_demo", "main"]

logger = logging.getLogger("hkd_d2.demo")

# Default configs: the student trained alone (--student-configs: Table 3 row 1, level-assigned
# RoIAlign, the strongest student alone here) and the distilled student (--hkd-config: row 7, PD + RD
# + LD on the same network, taught by the level-assigned teacher). Row 8 (the same with PyRoIAlign)
# is not the default: trained from scratch on a CPU, PyRoIAlign's fusion slows learning, of the
# teacher and of the student alone (benchmarks/README.md). The teacher's config is the one the HKD
# config names (MODEL.TEACHER.CONFIG_FILE).
DEFAULT_CONFIGS = {
    "students": ["configs/synthetic/table3/t3_1_baseline.yaml"],
    "hkd": "configs/synthetic/table3/t3_7_pd_rd_ld.yaml",
}
# Names of the demo's data splits. With the built-in synthetic defaults (SYNTHETIC_DEFAULTS) its
# images are those of the built-in synthetic_citypersons_* sets, registered on import in every
# process: the run folders then name those, and export, --eval-only and the other tools find the
# same images. Other data get names only the demo's process knows.
BUILTIN_SETS = ("synthetic_citypersons_train", "synthetic_citypersons_val")
DEMO_SETS = ("hkd_demo_train", "hkd_demo_val")
# The detectors see the generated images at 0.8x their size: cheaper training steps keep the demo
# within its 10-minute budget on 2 cores, and persons of the Reasonable range (>= 50 px) are still
# >= 40 px at the input.
DEMO_INPUT_SCALE = 0.8


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_output", help="output folder")
    p.add_argument("--data", default=None, help="synthetic data folder (default: OUT/data; generated if absent)")
    data = SYNTHETIC_DEFAULTS
    p.add_argument("--num-train", type=int, default=data["num_train"], help="generated training images")
    p.add_argument("--num-val", type=int, default=data["num_val"], help="generated validation images")
    p.add_argument("--image-size", type=int, nargs=2, default=(data["height"], data["width"]), metavar=("H", "W"),
                   help="size of the generated images")
    p.add_argument("--person-scale", type=float, default=data["scale"],
                   help="multiplier on generated person heights (2 keeps the Reasonable range (>= 50 px) populated at 240 px)")
    p.add_argument("--student-configs", nargs="+", default=DEFAULT_CONFIGS["students"],
                   help="configs of the students trained alone (the best of them is the reference of the paired gain)")
    p.add_argument("--hkd-config", default=DEFAULT_CONFIGS["hkd"],
                   help="config of the distilled student (Distiller; its MODEL.TEACHER.CONFIG_FILE is the teacher)")
    p.add_argument("--input-scale", type=float, default=DEMO_INPUT_SCALE,
                   help="detector input size (training and test) as a fraction of --image-size")
    p.add_argument("--teacher-iters", type=int, default=500, help="teacher training iterations")
    p.add_argument("--student-iters", type=int, default=200, help="iterations of each student run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the student and HKD runs")
    p.add_argument("--latency-size", type=int, nargs=2, default=(600, 800), metavar=("H", "W"),
                   help="network input of the latency and GMAC columns")
    p.add_argument("--latency-repeats", type=int, default=3, help="timed runs per detector (median reported)")
    p.add_argument("--budget-min", type=float, default=10.0, help="time budget shown in the stage banners")
    p.add_argument("--vis-threshold", type=float, default=0.3, help="score threshold of detections.jpg")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--reuse-checkpoints", action="store_true",
                   help="skip a training whose model_final.pth already exists in OUT (same knobs assumed)")
    return p.parse_args(argv)


def _student_kinds(args: argparse.Namespace) -> List[str]:
    return [student_kind(Path(c).stem) for c in args.student_configs]


def _stage_plan(args: argparse.Namespace) -> Dict[str, float]:
    return stage_plan(_student_kinds(args), args.seeds, args.teacher_iters, args.student_iters, args.num_val)


def dataset_names(args: argparse.Namespace) -> Tuple[str, str]:
    """(train, val) names of the demo's data: the built-in synthetic CityPersons names when the demo
    generates the built-in synthetic data (default ``--data`` and data knobs), else its own."""
    data = SYNTHETIC_DEFAULTS
    knobs = (args.num_train, args.num_val, tuple(args.image_size), args.person_scale)
    builtin = (data["num_train"], data["num_val"], (data["height"], data["width"]), data["scale"])
    return BUILTIN_SETS if args.data is None and knobs == builtin else DEMO_SETS


def prepare_data(args: argparse.Namespace, data_dir: Path) -> None:
    """Generate the demo data (unless ``data_dir`` exists) and register its two splits
    (:func:`dataset_names`) on it."""
    if not data_dir.is_dir():
        h, w = args.image_size
        cfg = SyntheticConfig(width=w, height=h, seed=SYNTHETIC_DEFAULTS["seed"], scale=args.person_scale)
        generate_synthetic(data_dir, args.num_train, args.num_val, cfg, formats=("citypersons",))
    else:
        logger.info(f"Using existing data in {data_dir}")
    root = data_dir / "citypersons"
    for name, split in zip(dataset_names(args), ("train", "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_pedestrian_dataset(name, root / "annotations" / f"anno_{split}.mat",
                                    image_root=root / "leftImg8bit" / split)


def input_size(args: argparse.Namespace) -> Tuple[int, int]:
    """(H, W) the detectors see in training and test: ``--image-size`` scaled by ``--input-scale``."""
    return tuple(round(args.input_scale * side) for side in args.image_size)


def _run_opts(args: argparse.Namespace, iters: int, seed: int) -> List[str]:
    """Per-run overrides: the demo data, its input size, the schedule and the seed (the rest is in
    the configs)."""
    train_set, val_set = dataset_names(args)
    h, w = input_size(args)
    return [
        "DATASETS.TRAIN", f"('{train_set}',)", "DATASETS.TEST", f"('{val_set}',)",
        "INPUT.MIN_SIZE_TRAIN", f"({h},)", "INPUT.MAX_SIZE_TRAIN", str(w),
        "INPUT.MIN_SIZE_TEST", str(h), "INPUT.MAX_SIZE_TEST", str(w),
        "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(0.8 * iters)},)",
        "SOLVER.WARMUP_ITERS", str(min(50, iters // 5)), "SOLVER.CHECKPOINT_PERIOD", str(iters + 1),
        "TEST.MISS_RATE.PLOT", "False", "SEED", str(seed), "MODEL.DEVICE", args.device,
    ]


def _run_config(args: argparse.Namespace, kind: str) -> str:
    """Config file of a kind: the teacher named by the HKD config, the HKD config, or a student's."""
    if kind.startswith(STUDENT_PREFIX):
        name = kind[len(STUDENT_PREFIX):]
        config = next(c for c in args.student_configs if Path(c).stem == name)
        return resolve_path(config, "--student-configs")
    hkd_config = resolve_path(args.hkd_config, "--hkd-config")
    return teacher_config(hkd_config) if kind == "teacher" else hkd_config


def _run_dir(out: Path, kind: str, seed: int) -> Path:
    if kind == "teacher":
        return out / "teacher"
    if kind.startswith(STUDENT_PREFIX):
        return out / f"student_{kind[len(STUDENT_PREFIX):]}_seed{seed}"
    return out / f"{kind}_seed{seed}"


def demo_run(args: argparse.Namespace, kind: str, seed: int, out: Path, extra_opts: Sequence[str] = ()) -> Dict:
    """Train one detector of ``kind`` (teacher / hkd / student:<config>) and evaluate it on the demo val set."""
    iters = args.teacher_iters if kind == "teacher" else args.student_iters
    run_dir = _run_dir(out, kind, seed)
    cfg = build_run_config(_run_config(args, kind), _run_opts(args, iters, seed) + list(extra_opts), str(run_dir))
    final = run_dir / "model_final.pth"
    if args.reuse_checkpoints and final.is_file():
        logger.info(f"Reusing {final}")
        model = build_predictor(cfg, str(final)).model
    else:
        model = train(cfg)
    mr = evaluate(cfg, model, str(run_dir / "eval"))
    logger.info(f"{row_name(kind)} (seed {seed}) MR: " + ", ".join(f"{k} {v:.2f}" for k, v in mr.items()))
    return {"cfg": cfg, "weights": str(final), "mr": mr, "eval_dir": str(run_dir / "eval"), "seed": seed}


def busiest_image(records: List[Dict]) -> str:
    """File name of the record with the most non-ignored pedestrians (the picture to show)."""
    return max(records, key=lambda r: sum(not a.get("ignore", 0) for a in r["annotations"]))["file_name"]


def deployable(run: Dict, kind: str) -> Dict:
    """Config and weights of the plain detector of a run (an HKD run's student is exported)."""
    if kind != "hkd":
        return {"cfg": run["cfg"], "weights": run["weights"]}
    weights, config = export_student(run["cfg"], run["weights"], str(Path(run["weights"]).parent / "export"))
    return {"cfg": load_config(config, ["MODEL.DEVICE", run["cfg"].MODEL.DEVICE]), "weights": weights}


def measure_complexity(args: argparse.Namespace, detectors: Dict[str, Dict], image_bgr) -> Dict[str, Dict]:
    """Parameters, backbone GMACs and latency (batch 1, ``--latency-size``) of each detector
    (``detectors``: {kind: {"cfg", "weights"}})."""
    h, w = args.latency_size
    inputs = model_inputs(image_bgr, h, w)
    figures = {}
    for kind, detector in detectors.items():
        model = build_predictor(detector["cfg"], detector["weights"]).model
        with torch.no_grad():
            timing = time_call(lambda: model(inputs), repeats=args.latency_repeats, warmup=1, device=model.device)
        figures[kind] = {
            "params_M": count_parameters(model) / 1e6,
            "backbone_GMACs": backbone_gmacs(model, h, w),
            "latency_ms": 1e3 * timing.median,
            "pooler": detector["cfg"].MODEL.ROI_BOX_HEAD.POOLER_NAME,
            "latency": timing.to_dict(),
        }
        logger.info(f"{row_name(kind)}: {figures[kind]['params_M']:.2f} M params, "
                    f"{figures[kind]['backbone_GMACs']:.1f} GMACs, {timing.format_ms()} at {h}x{w}")
    return figures


def check_configs(args: argparse.Namespace) -> None:
    """Fail before any training when a config is missing, two students share a file name, or the
    HKD config names no teacher."""
    for config in args.student_configs:
        resolve_path(config, "--student-configs")
    stems = [Path(c).stem for c in args.student_configs]
    if len(set(stems)) != len(stems):
        raise ValueError(f"--student-configs need distinct file names (they name the run folders): {stems}")
    if teacher_config(resolve_path(args.hkd_config, "--hkd-config")) is None:
        raise ValueError(f"--hkd-config {args.hkd_config} distills from no teacher "
                         "(MODEL.META_ARCHITECTURE Distiller with MODEL.DISTILL.TERMS needed)")


def _train_all(args: argparse.Namespace, out: Path, clock: StageClock) -> Dict[str, List[Dict]]:
    """{kind: [run per seed]} for the teacher (one run), each student alone and the HKD student."""
    clock.start("teacher")
    teacher = demo_run(args, "teacher", args.seeds[0], out)
    teacher_opts = ["MODEL.TEACHER.WEIGHTS", teacher["weights"]]
    runs = {"teacher": [teacher], **{k: [] for k in _student_kinds(args)}, "hkd": []}
    for seed in args.seeds:
        for kind in _student_kinds(args):
            clock.start(f"{kind} seed {seed}")
            runs[kind].append(demo_run(args, kind, seed, out))
        clock.start(f"hkd seed {seed}")
        runs["hkd"].append(demo_run(args, "hkd", seed, out, teacher_opts))
    return runs


def _per_seed(runs: Dict[str, List[Dict]], best: str) -> List[Dict]:
    """Per seed: MR Reasonable of the best student alone ("student"), the distilled one and every student."""
    students = [k for k in runs if k.startswith(STUDENT_PREFIX)]
    rows = []
    for i, hkd in enumerate(runs["hkd"]):
        by_kind = {k: runs[k][i]["mr"]["Reasonable"] for k in students}
        rows.append({"seed": hkd["seed"], "student": by_kind[best], "hkd": hkd["mr"]["Reasonable"],
                     "students": by_kind})
    return rows


def _pictures(args: argparse.Namespace, out: Path, runs: Dict[str, List[Dict]], detectors: Dict[str, Dict],
              val_image) -> None:
    val_set = dataset_names(args)[1]
    curves = {row_name(k): curves_from_output(val_set, v[0]["eval_dir"], ["Reasonable"])["Reasonable"]
              for k, v in runs.items()}
    plot_mr_fppi(curves, out / "mr_fppi.png", title="Demo validation set, Reasonable")
    predictor = build_predictor(detectors["hkd"]["cfg"], detectors["hkd"]["weights"])
    cv2.imwrite(str(out / "detections.jpg"),
                draw_detections(val_image, predictor(val_image)["instances"], args.vis_threshold))


def run_demo(args: argparse.Namespace) -> Dict:
    """Run every stage; return the content of ``report.json``."""
    check_configs(args)
    environment = numeric_environment(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(_stage_plan(args), budget_s=60 * args.budget_min)
    logger.info("Plan: " + ", ".join(f"{k} ~{format_duration(v)}" for k, v in clock.plan.items())
                + f" | total ~{format_duration(sum(clock.plan.values()))}")

    clock.start("data")
    prepare_data(args, Path(args.data) if args.data else out / "data")
    runs = _train_all(args, out, clock)

    clock.start("complexity")
    val_image = cv2.imread(busiest_image(DatasetCatalog.get(dataset_names(args)[1])))
    detectors = {k: deployable(v[0], k) for k, v in runs.items()}
    figures = measure_complexity(args, detectors, val_image)

    clock.start("report")
    summary = summarize({k: [r["mr"] for r in v] for k, v in runs.items()})
    best = best_student(summary)
    paired = paired_summary({k: {r["seed"]: r["mr"] for r in v} for k, v in runs.items() if k != "teacher"}, best)
    gaps = gap_table(summary, best)
    per_seed = _per_seed(runs, best)
    _pictures(args, out, runs, detectors, val_image)
    clock.finish()

    total_s = clock.elapsed()
    result = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "mr": {k: [r["mr"] for r in v] for k, v in runs.items()},
        "summary": summary,
        "complexity": figures,
        "best_student": best,
        "gap_closed": gaps,
        "hkd_better_per_seed": per_seed,
        "paired": paired,
        "environment": environment,
        "stage_seconds": clock.durations(),
        "total_seconds": total_s,
    }
    write_json(out / "report.json", result)
    report = render_report(args, summary, figures, gaps, per_seed, paired, clock.durations(), total_s, environment)
    write_text(out / "report.md", report)
    print(report)
    logger.info(f"Demo finished in {format_duration(total_s)}; report in {out / 'report.md'}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in ("detectron2", "hkd_d2", "fvcore"):
        setup_logger(output=str(Path(args.out) / "log.txt"), name=name, abbrev_name=name[:3])
    return run_demo(args)


if __name__ == "__main__":
    main()

"""End-to-end demo on generated data: teacher, student, HKD-distilled student, Table-1-style report.

Stages (one after another, in this process, with the project's configs and Trainer):

1. generate a small synthetic CityPersons-format data set (unless present);
2. train the R50-FPN teacher that ``--hkd-config`` names (``MODEL.TEACHER.CONFIG_FILE``) and
   evaluate it;
3. per seed: train the R18-FPN student alone (``--student-config``) and evaluate it;
4. per seed: train the R18-FPN student with distillation from that teacher (``--hkd-config`` with
   ``MODEL.TEACHER.WEIGHTS`` = the teacher's ``model_final.pth``), export and evaluate it;
5. parameters, backbone GMACs and latency at 600x800 of each detector;
6. ``report.md`` + ``report.json`` (the paper's Table 1 shape and the fraction of the
   teacher-student gap that distillation closed), ``mr_fppi.png`` and ``detections.jpg``.

Every knob (configs, data size, image size, schedules, seeds) is a command-line option of ``tools/demo.py``.
"""
import argparse
import logging
import math
import platform
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from ..data import SyntheticConfig, generate_synthetic, register_pedestrian_dataset
from ..data.register import SYNTHETIC_DEFAULTS
from ..engine.setup import load_config
from ..evaluation import plot_mr_fppi
from ..export import export_student
from ..modeling.teacher import resolve_path
from .complexity import backbone_gmacs, count_parameters
from .inference import build_predictor, model_inputs
from .progress import StageClock, format_duration
from .report import format_mean_spread, gap_closed, markdown_table, mean_and_spread, write_json, write_text
from .runs import build_run_config, curves_from_output, evaluate, teacher_config, train
from .timing import time_call
from .visualize import draw_detections

__all__ = ["parse_args", "check_configs", "run_demo", "main"]

logger = logging.getLogger("hkd_d2.demo")

# Default configs of the two students (--student-config, --hkd-config): Table 3's last row and the
# same network trained alone (its row 2), so the two rows differ by distillation only. The
# teacher's config is the one the HKD config names (MODEL.TEACHER.CONFIG_FILE).
DEFAULT_CONFIGS = {
    "student": "configs/synthetic/table3/t3_2_pyroialign.yaml",
    "hkd": "configs/synthetic/table3/t3_8_pd_rd_ld_pyroialign.yaml",
}
ROW_NAMES = {"teacher": "Teacher R50-FPN", "student": "Student R18-FPN", "hkd": "Student R18-FPN + HKD"}
# Miss-rate setups of the CityPersons protocol -> Table 1 column names.
SETUP_COLUMNS = {"Reasonable": "Reasonable", "Reasonable_small": "Small", "Reasonable_occ=heavy": "Heavy", "All": "All"}
TRAIN_SET, VAL_SET = "hkd_demo_train", "hkd_demo_val"
# Training cost of the configs/synthetic detectors on an idle 2-core CPU, seconds per
# iteration (measured); only used for the stage plan and ETA banners.
TRAIN_COST = {"teacher": 0.77, "student": 0.40, "hkd": 0.64}
# Rough fixed costs of the other stages on the same machine (seconds).
OTHER_COST = {"data": 5.0, "complexity": 15.0, "report": 10.0}
# Evaluation cost per validation image (seconds).
EVAL_COST = {"teacher": 0.17, "student": 0.13, "hkd": 0.13}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_output", help="output folder")
    p.add_argument("--data", default=None, help="synthetic data folder (default: OUT/data; generated if absent)")
    data = SYNTHETIC_DEFAULTS
    p.add_argument("--num-train", type=int, default=data["num_train"], help="generated training images")
    p.add_argument("--num-val", type=int, default=data["num_val"], help="generated validation images")
    p.add_argument("--image-size", type=int, nargs=2, default=(data["height"], data["width"]), metavar=("H", "W"),
                   help="size of the generated images (the configs' input size)")
    p.add_argument("--person-scale", type=float, default=data["scale"],
                   help="multiplier on generated person heights (2 keeps the Reasonable range (>= 50 px) populated at 240 px)")
    p.add_argument("--student-config", default=DEFAULT_CONFIGS["student"], help="config of the student alone")
    p.add_argument("--hkd-config", default=DEFAULT_CONFIGS["hkd"],
                   help="config of the distilled student (HKDDistiller; its MODEL.TEACHER.CONFIG_FILE is the teacher)")
    p.add_argument("--teacher-iters", type=int, default=700, help="teacher training iterations")
    p.add_argument("--student-iters", type=int, default=250, help="iterations of each student run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the student and HKD runs")
    p.add_argument("--latency-size", type=int, nargs=2, default=(600, 800), metavar=("H", "W"),
                   help="network input of the latency and GMAC columns")
    p.add_argument("--latency-repeats", type=int, default=3, help="timed runs per detector (median reported)")
    p.add_argument("--budget-min", type=float, default=15.0, help="time budget shown in the stage banners")
    p.add_argument("--vis-threshold", type=float, default=0.3, help="score threshold of detections.jpg")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--reuse-checkpoints", action="store_true",
                   help="skip a training whose model_final.pth already exists in OUT (same knobs assumed)")
    return p.parse_args(argv)


def _stage_plan(args: argparse.Namespace) -> Dict[str, float]:
    plan = {"data": OTHER_COST["data"]}

    def run_cost(kind: str, iters: int) -> float:
        return TRAIN_COST[kind] * iters + EVAL_COST[kind] * args.num_val

    plan["teacher"] = run_cost("teacher", args.teacher_iters)
    for seed in args.seeds:
        plan[f"student seed {seed}"] = run_cost("student", args.student_iters)
        plan[f"hkd seed {seed}"] = run_cost("hkd", args.student_iters)
    plan["complexity"] = OTHER_COST["complexity"]
    plan["report"] = OTHER_COST["report"]
    return plan


def prepare_data(args: argparse.Namespace, data_dir: Path) -> None:
    """Generate the demo data (unless ``data_dir`` exists) and register its two splits."""
    if not data_dir.is_dir():
        h, w = args.image_size
        cfg = SyntheticConfig(width=w, height=h, seed=SYNTHETIC_DEFAULTS["seed"], scale=args.person_scale)
        generate_synthetic(data_dir, args.num_train, args.num_val, cfg, formats=("citypersons",))
    else:
        logger.info(f"Using existing data in {data_dir}")
    root = data_dir / "citypersons"
    for name, split in ((TRAIN_SET, "train"), (VAL_SET, "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        register_pedestrian_dataset(name, root / "annotations" / f"anno_{split}.mat",
                                    image_root=root / "leftImg8bit" / split)


def _run_opts(args: argparse.Namespace, iters: int, seed: int) -> List[str]:
    """Per-run overrides: the demo data, the schedule and the seed (the rest is in the configs)."""
    return [
        "DATASETS.TRAIN", f"('{TRAIN_SET}',)", "DATASETS.TEST", f"('{VAL_SET}',)",
        "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(0.8 * iters)},)",
        "SOLVER.WARMUP_ITERS", str(min(50, iters // 5)), "SOLVER.CHECKPOINT_PERIOD", str(iters + 1),
        "TEST.MISS_RATE.PLOT", "False", "SEED", str(seed), "MODEL.DEVICE", args.device,
    ]


def demo_run(args: argparse.Namespace, kind: str, seed: int, out: Path,
                       extra_opts: Sequence[str] = ()) -> Dict:
    """Train one detector of ``kind`` (teacher/student/hkd) and evaluate it on the demo val set."""
    iters = args.teacher_iters if kind == "teacher" else args.student_iters
    run_dir = out / (kind if kind == "teacher" else f"{kind}_seed{seed}")
    if kind == "student":
        config = resolve_path(args.student_config, "--student-config")
    else:
        hkd_config = resolve_path(args.hkd_config, "--hkd-config")
        config = teacher_config(hkd_config) if kind == "teacher" else hkd_config
    cfg = build_run_config(config, _run_opts(args, iters, seed) + list(extra_opts), str(run_dir))
    final = run_dir / "model_final.pth"
    if args.reuse_checkpoints and final.is_file():
        logger.info(f"Reusing {final}")
        model = build_predictor(cfg, str(final)).model
    else:
        model = train(cfg)
    mr = evaluate(cfg, model, str(run_dir / "eval"))
    logger.info(f"{ROW_NAMES[kind]} (seed {seed}) MR: " + ", ".join(f"{k} {v:.2f}" for k, v in mr.items()))
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
        logger.info(f"{ROW_NAMES[kind]}: {figures[kind]['params_M']:.2f} M params, "
                    f"{figures[kind]['backbone_GMACs']:.1f} GMACs, {timing.format_ms()} at {h}x{w}")
    return figures


def summarize(mr_runs: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{kind: {setup: mean_and_spread over seeds}}."""
    return {kind: {s: mean_and_spread([r[s] for r in runs]) for s in SETUP_COLUMNS} for kind, runs in mr_runs.items()}


def table1(summary: Dict[str, Dict], figures: Dict[str, Dict], latency_size: Sequence[int]) -> str:
    """The paper's Table 1 shape: one row per detector, MR (%) per setup, size and speed."""
    h, w = latency_size
    headers = ["Method", "Params (M)", f"Backbone GMACs @{h}x{w}"] + [f"MR {c} (%)" for c in SETUP_COLUMNS.values()] \
        + [f"ms / {h}x{w} image"]
    rows = []
    for kind in ("teacher", "student", "hkd"):
        f = figures[kind]
        rows.append([ROW_NAMES[kind], f"{f['params_M']:.2f}", f"{f['backbone_GMACs']:.1f}"]
                    + [format_mean_spread(summary[kind][s]) for s in SETUP_COLUMNS] + [f"{f['latency_ms']:.0f}"])
    return markdown_table(headers, rows)


def gap_table(summary: Dict[str, Dict]) -> Dict[str, float]:
    """{setup: fraction of the teacher-student MR gap closed by HKD} (mean MR over seeds)."""
    return {s: gap_closed(summary["teacher"][s]["mean"], summary["student"][s]["mean"], summary["hkd"][s]["mean"])
            for s in SETUP_COLUMNS}


def render_report(args, summary, figures, gaps, per_seed, durations, total_s) -> str:
    lines = [
        "# hkd_d2 demo report",
        "",
        f"Synthetic CityPersons-format data: {args.num_train} train / {args.num_val} val images of "
        f"{args.image_size[0]}x{args.image_size[1]} px; detectors of `configs/synthetic/`. "
        f"Everything trained from scratch on `{args.device}`: teacher {args.teacher_iters} iterations, "
        f"each student {args.student_iters} iterations; seeds {list(args.seeds)}.",
        "",
        table1(summary, figures, args.latency_size),
        "",
        "MR: log-average miss rate (%, lower is better) on the demo's validation images; mean ± std over seeds.",
        "Params count the deployed detector (distillation adapters left out); GMACs of the backbone "
        "(ResNet + FPN) from fvcore; latency: median of "
        f"{args.latency_repeats} runs, batch 1, on this machine ({platform.processor() or platform.machine()}, "
        f"torch threads: {torch.get_num_threads()}). Configs: distilled student `{args.hkd_config}` "
        f"(RoI pooler {figures['hkd'].get('pooler', '?')}), student alone `{args.student_config}` "
        f"(RoI pooler {figures['student'].get('pooler', '?')}).",
        "",
        "## Teacher-student gap closed by distillation",
        "",
        markdown_table(["Setup", "gap closed"], [[SETUP_COLUMNS[s], _percent(v)] for s, v in gaps.items()]),
        "",
        "gap closed = (MR student - MR distilled) / (MR student - MR teacher); n/a where the teacher is not better.",
        "",
        "## Per seed (MR Reasonable, %)",
        "",
        f"The distilled student beats the student alone (lower MR Reasonable) on "
        f"{sum(s['hkd'] < s['student'] for s in per_seed)} of {len(per_seed)} seed(s) of this run.",
        "",
        markdown_table(["Seed", "student", "student + HKD", "HKD better"],
                       [[s["seed"], f"{s['student']:.2f}", f"{s['hkd']:.2f}", "yes" if s["hkd"] < s["student"] else "no"]
                        for s in per_seed]),
        "",
        "## Time",
        "",
        markdown_table(["Stage", "time"], [[k, format_duration(v)] for k, v in durations.items()]
                       + [["total", format_duration(total_s)]]),
        "",
        f"Files: `mr_fppi.png` (MR-FPPI, Reasonable), `detections.jpg` (distilled student, score >= {args.vis_threshold}), "
        "`report.json`, and one folder per training run (config, log, `model_final.pth`, detections).",
        "",
    ]
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"


def check_configs(args: argparse.Namespace) -> None:
    """Fail before any training when a config is missing or the HKD config names no teacher."""
    resolve_path(args.student_config, "--student-config")
    if teacher_config(resolve_path(args.hkd_config, "--hkd-config")) is None:
        raise ValueError(f"--hkd-config {args.hkd_config} distills from no teacher "
                         "(MODEL.META_ARCHITECTURE HKDDistiller with MODEL.DISTILL.TERMS needed)")


def run_demo(args: argparse.Namespace) -> Dict:
    """Run every stage; return the content of ``report.json``."""
    check_configs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(_stage_plan(args), budget_s=60 * args.budget_min)
    logger.info("Plan: " + ", ".join(f"{k} ~{format_duration(v)}" for k, v in clock.plan.items())
                + f" | total ~{format_duration(sum(clock.plan.values()))}")

    clock.start("data")
    prepare_data(args, Path(args.data) if args.data else out / "data")

    clock.start("teacher")
    teacher = demo_run(args, "teacher", args.seeds[0], out)
    teacher_opts = ["MODEL.TEACHER.WEIGHTS", teacher["weights"]]
    runs = {"teacher": [teacher], "student": [], "hkd": []}
    for seed in args.seeds:
        clock.start(f"student seed {seed}")
        runs["student"].append(demo_run(args, "student", seed, out))
        clock.start(f"hkd seed {seed}")
        runs["hkd"].append(demo_run(args, "hkd", seed, out, teacher_opts))

    clock.start("complexity")
    val_image = cv2.imread(busiest_image(DatasetCatalog.get(VAL_SET)))
    detectors = {k: deployable(v[0], k) for k, v in runs.items()}
    figures = measure_complexity(args, detectors, val_image)

    clock.start("report")
    summary = summarize({k: [r["mr"] for r in v] for k, v in runs.items()})
    gaps = gap_table(summary)
    per_seed = [{"seed": s["seed"], "student": s["mr"]["Reasonable"], "hkd": d["mr"]["Reasonable"]}
                for s, d in zip(runs["student"], runs["hkd"])]
    curves = {ROW_NAMES[k]: curves_from_output(VAL_SET, v[0]["eval_dir"], ["Reasonable"])["Reasonable"]
              for k, v in runs.items()}
    plot_mr_fppi(curves, out / "mr_fppi.png", title="Demo validation set, Reasonable")
    predictor = build_predictor(detectors["hkd"]["cfg"], detectors["hkd"]["weights"])
    detections = draw_detections(val_image, predictor(val_image)["instances"], args.vis_threshold)
    cv2.imwrite(str(out / "detections.jpg"), detections)
    clock.finish()

    total_s = clock.elapsed()
    result = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "mr": {k: [r["mr"] for r in v] for k, v in runs.items()},
        "summary": summary,
        "complexity": figures,
        "gap_closed": gaps,
        "hkd_better_per_seed": per_seed,
        "stage_seconds": clock.durations(),
        "total_seconds": total_s,
    }
    write_json(out / "report.json", result)
    report = render_report(args, summary, figures, gaps, per_seed, clock.durations(), total_s)
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

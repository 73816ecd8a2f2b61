"""The demo's results as tables and prose: Table 1 shape, gap closed, paired gains over seeds.

Rows are *kinds*: ``"teacher"``, ``"hkd"`` and one ``"student:<config name>"`` per student trained
alone (``--student-configs``). The best student alone is the one with the lowest mean MR
Reasonable over the seeds; the distilled student is compared with it seed by seed
(:func:`hkd_d2.tools.paired.paired_gain`).
"""
import math
from typing import Dict, List, Mapping, Sequence

from .environment import format_environment
from .paired import format_paired, paired_gain
from .progress import format_duration
from .report import format_mean_spread, gap_closed, markdown_table, mean_and_spread

__all__ = ["SETUP_COLUMNS", "STUDENT_PREFIX", "student_kind", "row_name", "summarize", "best_student",
           "paired_summary", "table1", "gap_table", "render_report"]

# Miss-rate setups of the CityPersons protocol -> Table 1 column names.
SETUP_COLUMNS = {"Reasonable": "Reasonable", "Reasonable_small": "Small", "Reasonable_occ=heavy": "Heavy", "All": "All"}
# Setup on which students are ranked and the paired gains are computed.
PAIRED_SETUP = "Reasonable"
STUDENT_PREFIX = "student:"
ROW_NAMES = {"teacher": "Teacher R50-FPN", "hkd": "Student R18-FPN + HKD"}


def student_kind(config_name: str) -> str:
    """Kind of the student trained alone with config ``config_name`` (file stem)."""
    return STUDENT_PREFIX + config_name


def row_name(kind: str, poolers: Mapping[str, str] = None) -> str:
    """Display name of a kind; students alone carry their RoI pooler (their only difference)."""
    if kind.startswith(STUDENT_PREFIX):
        pooler = (poolers or {}).get(kind)
        return "Student R18-FPN alone" + (f" ({pooler})" if pooler else f" ({kind[len(STUDENT_PREFIX):]})")
    return ROW_NAMES[kind]


def summarize(mr_runs: Mapping[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{kind: {setup: mean_and_spread over seeds}}."""
    return {kind: {s: mean_and_spread([r[s] for r in runs]) for s in SETUP_COLUMNS} for kind, runs in mr_runs.items()}


def best_student(summary: Mapping[str, Dict]) -> str:
    """The student-alone kind with the lowest mean MR Reasonable."""
    students = [k for k in summary if k.startswith(STUDENT_PREFIX)]
    if not students:
        raise ValueError("No student trained alone in the summary")
    return min(students, key=lambda k: summary[k][PAIRED_SETUP]["mean"])


def paired_summary(mr_by_seed: Mapping[str, Mapping[int, Dict[str, float]]], best: str) -> Dict:
    """Paired gains of the distilled student over every student alone (MR Reasonable).

    ``mr_by_seed``: {kind: {seed: {setup: MR}}}. Returns ``{"best_student", "vs_best": gain,
    "vs": {kind: gain}}`` with the gains of :func:`paired_gain` (positive = distillation better).
    """
    hkd = {s: mr[PAIRED_SETUP] for s, mr in mr_by_seed["hkd"].items()}
    vs = {kind: paired_gain({s: mr[PAIRED_SETUP] for s, mr in runs.items()}, hkd)
          for kind, runs in mr_by_seed.items() if kind.startswith(STUDENT_PREFIX)}
    return {"best_student": best, "vs_best": vs[best], "vs": vs}


def table1(summary: Mapping[str, Dict], figures: Mapping[str, Dict], latency_size: Sequence[int]) -> str:
    """The paper's Table 1 shape: one row per detector, MR (%) per setup, size and speed."""
    h, w = latency_size
    headers = ["Method", "Params (M)", f"Backbone GMACs @{h}x{w}"] + [f"MR {c} (%)" for c in SETUP_COLUMNS.values()] \
        + [f"ms / {h}x{w} image"]
    poolers = {k: f.get("pooler") for k, f in figures.items()}
    order = ["teacher"] + sorted(k for k in summary if k.startswith(STUDENT_PREFIX)) + ["hkd"]
    rows = []
    for kind in order:
        f = figures[kind]
        rows.append([row_name(kind, poolers), f"{f['params_M']:.2f}", f"{f['backbone_GMACs']:.1f}"]
                    + [format_mean_spread(summary[kind][s]) for s in SETUP_COLUMNS] + [f"{f['latency_ms']:.0f}"])
    return markdown_table(headers, rows)


def gap_table(summary: Mapping[str, Dict], student: str) -> Dict[str, float]:
    """{setup: fraction of the teacher-``student`` MR gap closed by HKD} (mean MR over seeds)."""
    return {s: gap_closed(summary["teacher"][s]["mean"], summary[student][s]["mean"], summary["hkd"][s]["mean"])
            for s in SETUP_COLUMNS}


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"


def _per_seed_table(per_seed: Sequence[Dict], students: Sequence[str], best: str) -> str:
    headers = ["Seed"] + [row_name(k) for k in students] + ["student + HKD", "gain over best alone", "HKD better"]
    rows = [[p["seed"]] + [f"{p['students'][k]:.2f}" for k in students]
            + [f"{p['hkd']:.2f}", f"{p['students'][best] - p['hkd']:+.2f}", "yes" if p["hkd"] < p["students"][best] else "no"]
            for p in per_seed]
    return markdown_table(headers, rows)


def render_report(args, summary, figures, gaps, per_seed, paired, durations, total_s, environment: Mapping) -> str:
    """``report.md``: settings, Table 1, gap closed, paired gains and per-seed MR (with the numeric
    ``environment`` they were measured in, :mod:`hkd_d2.tools.environment`), stage times."""
    best = paired["best_student"]
    students = sorted(k for k in summary if k.startswith(STUDENT_PREFIX))
    gain = paired["vs_best"]
    lines = [
        "# hkd_d2 demo report",
        "",
        f"Synthetic CityPersons-format data: {args.num_train} train / {args.num_val} val images of "
        f"{args.image_size[0]}x{args.image_size[1]} px, seen at {args.input_scale:g}x their size; detectors of "
        "`configs/synthetic/`. "
        f"Everything trained from scratch on `{args.device}`: teacher {args.teacher_iters} iterations, "
        f"each student {args.student_iters} iterations; seeds {list(args.seeds)}.",
        "",
        table1(summary, figures, args.latency_size),
        "",
        "MR: log-average miss rate (%, lower is better) on the demo's validation images; mean ± std over seeds.",
        "Params count the deployed detector (distillation adapters left out); GMACs of the backbone "
        "(ResNet + FPN) from fvcore; latency: median of "
        f"{args.latency_repeats} runs, batch 1, in the numeric environment below. Configs: distilled student "
        f"`{args.hkd_config}`, "
        "students alone " + ", ".join(f"`{c}`" for c in args.student_configs) + ".",
        "",
        "## Distilled student vs the best student alone (paired over seeds)",
        "",
        f"Best student alone (lowest mean MR Reasonable): **{row_name(best, {k: f.get('pooler') for k, f in figures.items()})}**. "
        f"Gain of the distilled student over it, MR Reasonable points (positive = distillation better), mean "
        f"[95% t interval] wins/losses over {gain['n']} seed(s): **{format_paired(gain)}**, verdict: **{gain['verdict']}**.",
        "",
        f"Numeric environment (the weights, and so the verdict, depend on it): {format_environment(environment)}.",
        "",
        markdown_table(["Student alone", "Gain of HKD [95% t interval] W/L", "Verdict"],
                       [[row_name(k), format_paired(g), g["verdict"]] for k, g in sorted(paired["vs"].items())]),
        "",
        _per_seed_table(per_seed, students, best),
        "",
        "## Teacher-student gap closed by distillation (best student alone)",
        "",
        markdown_table(["Setup", "gap closed"], [[SETUP_COLUMNS[s], _percent(v)] for s, v in gaps.items()]),
        "",
        "gap closed = (MR student - MR distilled) / (MR student - MR teacher) on the mean MR; n/a where the "
        "teacher is not better. With one or two seeds it is within the seed-to-seed spread: read the paired "
        "interval above first.",
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

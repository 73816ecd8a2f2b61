"""Where the spread of the demo's result comes from: numeric environment, teacher seed, student seed.

Reads demo output folders (``tools/demo.py --out DIR``: the finished runs in its ``log.txt`` and their
``metrics.json``),
each labelled with its numeric environment and teacher::

    python benchmarks/variance_decomposition.py \\
        --run 1thread:teacher0:out_t1 --run 2threads:teacher0:out_t2 --run 1thread:teacher1:out_t1_teacher1 \\
        --out benchmarks/results/variance_decomposition

The demo trains its teacher with the first of its seeds, so ``--seeds 1 0 2 3 4`` gives a teacher of
another seed under the same student seeds. For MR Reasonable of the student alone, the distilled
student and their paired gain it reports:

* **student seed**: the standard deviation over seeds inside one (environment, teacher) group;
* **environment**: per seed, the difference between two environments (same seed, same config; the
  teacher is trained in its environment too); its spread divided by sqrt(2) is the per-run standard
  deviation that the float order alone adds;
* **teacher seed**: per student seed, the difference between two teachers of one environment,
  divided by sqrt(2) likewise.

It also reads the distilled runs' loss curves (``metrics.json``, medians over Detectron2's logging
window) for the share of each distillation loss in the total loss and the largest jump of the
total loss between two logged points, and draws them (``<out>_losses.png``).
"""
import argparse
import json
import math
import platform
import re
import statistics
from dataclasses import dataclass
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hkd_d2.atomic import atomic_output  # noqa: E402
from hkd_d2.tools.paired import format_paired, paired_gain  # noqa: E402
from hkd_d2.tools.report import markdown_table, write_json, write_text  # noqa: E402

SETUP = "Reasonable"
KINDS = ("student", "hkd", "gain")
DISTILL_LOSSES = ("loss_pd", "loss_rd", "loss_ld")


@dataclass(frozen=True)
class Group:
    """One demo output folder: its numeric environment, its teacher label and its per-seed MR."""

    env: str
    teacher: str
    folder: Path
    teacher_mr: float
    mr: Dict[str, Dict[int, float]]  # kind -> {seed: MR Reasonable}

    @property
    def label(self) -> str:
        return f"{self.env}/{self.teacher}"


# A finished evaluation in the demo's log: "<Teacher|Student row name> (seed <k>) MR: Reasonable <x>, ...".
LOG_MR = re.compile(r"(?P<row>(?:Teacher|Student)[^\n]*?) \(seed (?P<seed>\d+)\) MR: Reasonable (?P<mr>[0-9.]+)")


def _from_log(folder: Path) -> Dict[str, Dict[int, float]]:
    """Per-seed MR of the runs a demo has finished so far (its report.json comes only at the end)."""
    found: Dict[str, Dict[int, float]] = {"teacher": {}, "student": {}, "hkd": {}}
    for m in LOG_MR.finditer((folder / "log.txt").read_text()):
        kind = "teacher" if m["row"].startswith("Teacher") else "hkd" if "+" in m["row"] else "student"
        found[kind][int(m["seed"])] = float(m["mr"])
    return found


def _from_report(path: Path) -> Dict[str, Dict[int, float]]:
    """Per-seed MR of a finished demo's ``report.json``."""
    report = json.loads(path.read_text())
    seeds = report["settings"]["seeds"]
    return {"teacher": {seeds[0]: report["mr"]["teacher"][0][SETUP]},
            "student": {s: r[SETUP] for s, r in zip(seeds, report["mr"][report["best_student"]])},
            "hkd": {s: r[SETUP] for s, r in zip(seeds, report["mr"]["hkd"])}}


def load_group(spec: str) -> Group:
    """``ENV:TEACHER:PATH`` -> :class:`Group`: PATH is a demo's report.json, or a demo output folder
    (its finished runs, read from its log.txt)."""
    env, teacher, folder = spec.split(":", 2)
    found = _from_report(Path(folder)) if folder.endswith(".json") else _from_log(Path(folder))
    student, hkd = found["student"], found["hkd"]
    gain = {s: student[s] - hkd[s] for s in sorted(set(student) & set(hkd))}
    return Group(env, teacher, Path(folder), next(iter(found["teacher"].values()), math.nan),
                 {"student": student, "hkd": hkd, "gain": gain})


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _between(a: Dict[int, float], b: Dict[int, float]) -> Dict[str, float]:
    """Per-seed differences a - b: mean, sd, and the per-run sd they imply (sd / sqrt 2)."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not diffs:
        return {"n": 0, "mean_diff": math.nan, "mean_abs_diff": math.nan, "per_run_sd": math.nan}
    return {"n": len(diffs), "mean_diff": statistics.fmean(diffs), "mean_abs_diff": statistics.fmean(map(abs, diffs)),
            "per_run_sd": _sd(diffs) / math.sqrt(2) if len(diffs) > 1 else math.nan}


def decompose(groups: List[Group]) -> Dict:
    """Seed spread per group, and environment / teacher effects between groups sharing the other factor."""
    result = {"groups": {}, "environment": {}, "teacher_seed": {}}
    for g in groups:
        result["groups"][g.label] = {
            "teacher_mr": g.teacher_mr,
            **{k: {"n": len(g.mr[k]), "mean": statistics.fmean(g.mr[k].values()) if g.mr[k] else math.nan,
                   "seed_sd": _sd(list(g.mr[k].values()))} for k in KINDS},
            "paired": paired_gain(g.mr["student"], g.mr["hkd"]),
        }
    for a, b in combinations(groups, 2):
        if a.teacher == b.teacher and a.env != b.env:
            result["environment"][f"{a.label} - {b.label}"] = {k: _between(a.mr[k], b.mr[k]) for k in KINDS}
        if a.env == b.env and a.teacher != b.teacher:
            result["teacher_seed"][f"{a.label} - {b.label}"] = {k: _between(a.mr[k], b.mr[k]) for k in KINDS}
    return result


def _hkd_runs(folder: Path) -> Dict[int, Path]:
    if not folder.is_dir():
        return {}
    return {int(p.name.rsplit("seed", 1)[1]): p / "metrics.json" for p in sorted(folder.glob("hkd_seed*"))}


def read_metrics(path: Path) -> List[Dict]:
    """The training records of one run's metrics.json (evaluation lines left out)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if "total_loss" in r]


def loss_summary(records: List[Dict]) -> Dict[str, float]:
    """Share of each distillation loss in the total loss (mean over logged points) and the largest
    ratio between consecutive logged total losses."""
    total = np.array([r["total_loss"] for r in records])
    out = {f"{k}_share": float(np.mean([r.get(k, 0.0) for r in records] / total)) for k in DISTILL_LOSSES}
    out["max_jump"] = float(np.max(total[1:] / total[:-1])) if total.size > 1 else math.nan
    out["final_total"] = float(total[-1])
    return out


def loss_table(groups: List[Group]) -> Dict[str, Dict[int, Dict[str, float]]]:
    return {g.label: {s: loss_summary(read_metrics(p)) for s, p in _hkd_runs(g.folder).items() if p.is_file()}
            for g in groups}


def plot_losses(groups: List[Group], path: Path) -> None:
    """Total and pyramid loss of every distilled run, one panel per group."""
    groups = [g for g in groups if _hkd_runs(g.folder)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), sharey=True, squeeze=False)
    for ax, g in zip(axes[0], groups):
        for seed, metrics in _hkd_runs(g.folder).items():
            records = read_metrics(metrics)
            it = [r["iteration"] for r in records]
            line, = ax.plot(it, [r["total_loss"] for r in records], label=f"seed {seed} total")
            ax.plot(it, [r.get("loss_pd", math.nan) for r in records], "--", color=line.get_color())
        ax.set_title(f"{g.label}: total (solid), PD (dashed)")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("loss (median over 20 iterations)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def render(result: Dict, losses: Dict, command: str) -> str:
    env = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, CPU only"
    lines = ["# Variance decomposition of the demo's result", "",
             f"Command: `{command}`", f"Date: {date.today().isoformat()}. Machine: {env}.",
             "MR Reasonable (%), lower is better; gain = student alone - distilled (positive = distillation better).", "",
             "## Per group (student seeds inside one environment and teacher)", ""]
    rows = [[label, f"{g['teacher_mr']:.2f}"] + [f"{g[k]['mean']:.2f} (sd {g[k]['seed_sd']:.2f})" for k in KINDS]
            + [format_paired(g["paired"]), g["paired"]["verdict"]] for label, g in result["groups"].items()]
    lines += [markdown_table(["group", "teacher MR", "student alone", "HKD", "gain", "paired gain", "verdict"], rows), ""]
    for title, key in (("Environment (same seed, same config, other float order)", "environment"),
                       ("Teacher seed (same environment, same student seed)", "teacher_seed")):
        rows = [[pair] + [f"{d[k]['mean_diff']:+.2f} / {d[k]['mean_abs_diff']:.2f} / {d[k]['per_run_sd']:.2f}"
                          for k in KINDS] for pair, d in result[key].items()]
        lines += [f"## {title}", "", "Per-seed difference: mean / mean absolute / implied per-run sd.", "",
                  markdown_table(["pair", "student alone", "HKD", "gain"], rows), ""]
    rows = [[label, seed] + [f"{v[f'{k}_share']:.2f}" for k in DISTILL_LOSSES] + [f"{v['max_jump']:.2f}", f"{v['final_total']:.3f}"]
            for label, runs in losses.items() for seed, v in sorted(runs.items())]
    lines += ["## Distilled runs' losses", "",
              "Share of each weighted distillation loss in the total loss (mean over logged points), largest ratio of "
              "consecutive logged total losses (> 1 = a jump), final total loss.", "",
              markdown_table(["group", "seed", "PD share", "RD share", "LD share", "max jump", "final total"], rows), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="ENV:TEACHER:FOLDER",
                   help="a demo output folder with its environment and teacher labels (repeat)")
    p.add_argument("--out", required=True, help="output prefix: writes OUT.md, OUT.json and OUT_losses.png")
    p.add_argument("--command", default="", help="the commands that produced the folders (recorded in OUT.md)")
    args = p.parse_args(argv)
    groups = [load_group(spec) for spec in args.run]
    result = decompose(groups)
    losses = loss_table(groups)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"decomposition": result, "losses": losses})
    write_text(out.with_suffix(".md"), render(result, losses, args.command))
    plot_losses(groups, out.parent / f"{out.name}_losses.png")
    return result


if __name__ == "__main__":
    main()

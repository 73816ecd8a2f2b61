"""Evaluator speed: hkd_d2's CrowdHuman (AP, MR^-2, JI) and MR^-2 (CityPersons) evaluators against
the official code, on generated sets of growing size.

    python benchmarks/evaluator_scaling.py --crowddet PATH/TO/CrowdDet --citypersons PATH/TO/eval_script \\
        [--sizes 100 1000 4370] [--seed 0] [--out benchmarks/results/evaluator_scaling]

Sets: tests/evaluation/cases.py ``crowdhuman_set`` / ``citypersons_set`` (23 persons and 100
detections per image), written to a temporary folder in each benchmark's files. For each size the
evaluations run in turn on the same files (ours, official, ours, ...), their numbers are asserted
identical (1e-6) and the seconds recorded (ours: the median of ``--repeats`` runs; file reading
included on both sides).

The official code is imported from the paths given, never copied: CrowdDet ``lib/evaluate``
(``compute_APMR``'s Database: load, compare, eval_AP, eval_MR; ``compute_JI``: load the dump,
``compute_JI_with_ignore`` + ``gather`` for the 10 score thresholds, in this process: the script's
10 worker processes are left out, so both sides use one core) and the CityPersons
``eval_MR_multisetup.py`` + ``coco.py`` (per setup, as its eval_demo.py: COCO, loadRes, evaluate,
accumulate, and the summary of ``summarize``). Glue for numpy 2 only: ``np.float``, an integer
``linspace`` count, ``unicode``.
"""
import argparse
import builtins
import contextlib
import datetime
import io
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hkd_d2.tools.crowdhuman_eval import evaluate_files  # noqa: E402
from hkd_d2.evaluation.miss_rate import evaluate_miss_rate, load_detections, load_ground_truth  # noqa: E402
from hkd_d2.reading import gc_paused  # noqa: E402
from tests.evaluation.cases import citypersons_set, crowdhuman_set, write_citypersons_case  # noqa: E402

CITYPERSONS_SETUPS = ("Reasonable", "Reasonable_small", "Reasonable_occ=heavy", "All")


def _timed(fn: Callable[[], Dict[str, float]], repeats: int) -> Tuple[Dict[str, float], float]:
    """fn's result and its median wall time over ``repeats`` runs."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


# --- official code, imported from the given paths ---------------------------------------------------

class _Official:
    def __init__(self, crowddet: Path, citypersons: Path):
        sys.path.insert(0, str(crowddet / "lib"))
        from evaluate import compute_JI  # noqa: F401  (CrowdDet lib/evaluate)
        from evaluate.APMRToolkits import database
        import utils.misc_utils as misc_utils

        self.database, self.compute_ji, self.misc_utils = database, sys.modules["evaluate.compute_JI"], misc_utils
        builtins.unicode = str
        if not hasattr(np, "float"):
            np.float = float
        sys.path.insert(0, str(citypersons))
        import coco
        import eval_MR_multisetup

        numpy = types.ModuleType("numpy_int_linspace")
        numpy.__dict__.update(np.__dict__)
        numpy.linspace = lambda a, b, num, **kw: np.linspace(a, b, int(num), **kw)
        eval_MR_multisetup.np = numpy
        self.coco, self.cocoeval = coco, eval_MR_multisetup

    def crowdhuman_apmr(self, gt: Path, dump: Path) -> Dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):
            db = self.database.Database(str(gt), str(dump), "box", None, 0)
            db.compare()
            return {"AP": float(db.eval_AP()[0]), "MR": float(db.eval_MR()[0])}

    def crowdhuman_ji(self, ji_dump: Path) -> Dict[str, float]:
        records = self.misc_utils.load_json_lines(str(ji_dump))
        means = []
        for i in range(10):
            results = _Queue()
            self.compute_ji.compute_JI_with_ignore(results, records, 1e-1 * i, "box")
            means.append(self.compute_ji.gather(results)[1])
        return {"JI": float(max(means))}

    def citypersons(self, gt: Path, dt: Path) -> Dict[str, float]:
        out = {}
        with contextlib.redirect_stdout(io.StringIO()):
            for id_setup, name in enumerate(CITYPERSONS_SETUPS):
                coco_gt = self.coco.COCO(str(gt))
                coco_dt = coco_gt.loadRes(str(dt))
                ev = self.cocoeval.COCOeval(coco_gt, coco_dt, "bbox")
                ev.params.imgIds = sorted(coco_gt.getImgIds())
                ev.evaluate(id_setup)
                ev.accumulate()
                mrs = 1 - ev.eval["TP"][:, :, :, 0]  # summarize(): maxDets 1000, iouThr 0.5
                out[name] = float(np.exp(np.mean(np.log(mrs[mrs < 2])))) if (mrs < 2).any() else -1.0
        return out


class _Queue(list):
    """The result queue of compute_JI_with_ignore, in this process."""

    def put_nowait(self, item):
        self.append(item)


# --- ours ----------------------------------------------------------------------------------------------

def ours_crowdhuman(gt: Path, dump: Path, ji: bool) -> Dict[str, float]:
    """As ``hkd-crowdhuman-eval``."""
    return evaluate_files(gt, dump, ji=ji)


def ours_citypersons(gt: Path, dt: Path) -> Dict[str, float]:
    """As ``hkd-miss-rate`` (the garbage collector paused while it reads and evaluates)."""
    with gc_paused():
        ground_truth = load_ground_truth(gt, "citypersons")
        return evaluate_miss_rate(ground_truth, load_detections(dt, ground_truth, "citypersons"), "citypersons",
                                  CITYPERSONS_SETUPS)


def _write_crowdhuman(case: Dict, folder: Path, misc_utils) -> Tuple[Path, Path, Path]:
    """gt.odgt, the dump (dt.odgt) and the dump with gtboxes that CrowdDet's JI reads
    (ji.odgt, gtboxes as tools/test.py dumps them: the full box and the class tag, -1 ignore)."""
    folder.mkdir(parents=True, exist_ok=True)
    gt, dump, ji = folder / "gt.odgt", folder / "dt.odgt", folder / "ji.odgt"
    gt.write_text("".join(json.dumps(e) + "\n" for e in case["gt"]))
    dump.write_text("".join(json.dumps(e) + "\n" for e in case["dt"]))
    lines = []
    for entry, det in zip(case["gt"], case["dt"]):
        boxes = misc_utils.load_gt(entry, "gtboxes", "fbox", ["background", "person"])
        gtboxes = [{"box": b[:4].tolist(), "tag": int(b[4])} for b in boxes]
        lines.append(json.dumps(dict(det, gtboxes=gtboxes)) + "\n")
    ji.write_text("".join(lines))
    return gt, dump, ji


def _parse_lines(*paths: Path) -> Dict[str, float]:
    """Only json.loads of every line of the files (the floor of any evaluation that reads them)."""
    with gc_paused():
        for path in paths:
            [json.loads(line) for line in path.read_text().splitlines()]
    return {}


def _same(ours: Dict[str, float], official: Dict[str, float], what: str) -> None:
    for key, value in official.items():
        if not (abs(ours[key] - value) <= 1e-6 or (math.isnan(ours[key]) and math.isnan(value))):
            raise AssertionError(f"{what}: {key} ours {ours[key]} official {value}")


def _machine() -> Dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    return {"cpu": model, "nproc": str(os.cpu_count()), "python": platform.python_version(), "numpy": np.__version__,
            "load_average_at_start": " ".join(f"{v:.1f}" for v in os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crowddet", type=Path, required=True, help="a CrowdDet checkout (its lib/evaluate is run)")
    parser.add_argument("--citypersons", type=Path, required=True,
                        help="the CityPersons evaluation folder holding eval_MR_multisetup.py and coco.py")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 4370])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per measurement (median)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "evaluator_scaling")
    parser.add_argument("--note", default="", help="written into the report, e.g. the official code's commits")
    args = parser.parse_args()
    official = _Official(args.crowddet.resolve(), args.citypersons.resolve())
    rows: List[Dict] = []
    machine = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            gt, dump, ji = _write_crowdhuman(crowdhuman_set(size, args.seed), folder / "crowdhuman", official.misc_utils)
            cp_gt, cp_dt = write_citypersons_case(citypersons_set(size, args.seed), folder / "citypersons")
            _, t_parse = _timed(lambda: _parse_lines(gt, dump), args.repeats)
            ours_apmr, t_ours_apmr = _timed(lambda: ours_crowdhuman(gt, dump, ji=False), args.repeats)
            off_apmr, t_off_apmr = _timed(lambda: official.crowdhuman_apmr(gt, dump), 1)
            ours_all, t_ours_all = _timed(lambda: ours_crowdhuman(gt, dump, ji=True), args.repeats)
            off_ji, t_off_ji = _timed(lambda: official.crowdhuman_ji(ji), 1)
            ours_cp, t_ours_cp = _timed(lambda: ours_citypersons(cp_gt, cp_dt), args.repeats)
            off_cp, t_off_cp = _timed(lambda: official.citypersons(cp_gt, cp_dt), 1)
            _same(ours_apmr, off_apmr, f"CrowdHuman AP/MR, {size} images")
            _same(ours_all, {**off_apmr, **off_ji}, f"CrowdHuman AP/MR/JI, {size} images")
            _same(ours_cp, off_cp, f"CityPersons MR^-2, {size} images")
            row = {"images": size, "metrics": {"crowdhuman": ours_all, "citypersons": ours_cp}, "seconds": {
                "json_parsing_crowdhuman_files": t_parse, "ours_crowdhuman_ap_mr": t_ours_apmr, "official_crowdhuman_ap_mr": t_off_apmr,
                "ours_crowdhuman_ap_mr_ji": t_ours_all, "official_crowdhuman_ji": t_off_ji,
                "ours_citypersons_mr": t_ours_cp, "official_citypersons_mr": t_off_cp}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine["load_average_at_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    report = {"command": "python benchmarks/evaluator_scaling.py " + shlex.join(sys.argv[1:]),
              "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "machine": machine,
              "seed": args.seed, "repeats_ours": args.repeats, "note": args.note, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


# seconds key -> column title of the growth table
KEYS = {
    "ours_crowdhuman_ap_mr": "CrowdHuman AP+MR ours",
    "official_crowdhuman_ap_mr": "official",
    "ours_crowdhuman_ap_mr_ji": "CrowdHuman AP+MR+JI ours",
    "official_crowdhuman_ji": "official JI",
    "ours_citypersons_mr": "MR^-2 ours",
    "official_citypersons_mr": "official",
}


def _markdown(report: Dict) -> str:
    m = report["machine"]
    lines = [
        "# Evaluator speed: hkd_d2 against the official evaluation code",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {m['cpu']}, {m['nproc']} CPUs (CPU only), Python {m['python']}, "
        f"numpy {m['numpy']}; seed {report['seed']}.  ",
        f"Measured under load (other jobs running; load average {m['load_average_at_start']} at the start, "
        f"{m['load_average_at_end']} at the end): each row runs ours and the official code in turn on the "
        f"same files, so the ratios are fairer than the seconds. Ours: median of {report['repeats_ours']} runs; "
        "official: one run, in one process (CrowdDet's JI normally spreads over 10 processes). File reading "
        "is included on both sides; every number was asserted identical (1e-6).",
        "",
        "Sets: tests/evaluation/cases.py `crowdhuman_set` / `citypersons_set`, 23 persons (some ignored) and "
        "100 detections per image." + (f" {report['note']}" if report.get("note") else ""),
        "",
        "| images | CrowdHuman AP+MR ours / official (s) | (json.loads of the two files alone) | CrowdHuman JI ours / "
        "official (s) | CrowdHuman AP+MR+JI ours / official (s), speed-up | MR^-2 (CityPersons, 4 setups) ours / "
        "official (s), speed-up |",
        "|---:|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        s = r["seconds"]
        ours_ji = max(s["ours_crowdhuman_ap_mr_ji"] - s["ours_crowdhuman_ap_mr"], 0.0)
        official_all = s["official_crowdhuman_ap_mr"] + s["official_crowdhuman_ji"]
        lines.append(
            f"| {r['images']} | {s['ours_crowdhuman_ap_mr']:.2f} / {s['official_crowdhuman_ap_mr']:.2f} "
            f"| {s['json_parsing_crowdhuman_files']:.2f} | {ours_ji:.2f} / {s['official_crowdhuman_ji']:.2f} "
            f"| {s['ours_crowdhuman_ap_mr_ji']:.2f} / {official_all:.2f}, "
            f"{official_all / s['ours_crowdhuman_ap_mr_ji']:.0f}x "
            f"| {s['ours_citypersons_mr']:.2f} / {s['official_citypersons_mr']:.2f}, "
            f"{s['official_citypersons_mr'] / s['ours_citypersons_mr']:.0f}x |")
    lines += [
        "",
        "Growth: milliseconds per image at each size (constant = linear in the number of images).",
        "",
        "| images | " + " | ".join(KEYS.values()) + " |",
        "|---:|" + "---:|" * len(KEYS),
    ]
    for r in report["rows"]:
        lines.append(f"| {r['images']} | " + " | ".join(f"{1000 * r['seconds'][k] / r['images']:.1f}" for k in KEYS) + " |")
    lines += [
        "",
        "JI (ours) is AP+MR+JI minus AP+MR: one pass computes the overlaps once for all three. AP+MR alone "
        "gains least: both sides parse the same JSON lines, which is most of our time (third column).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

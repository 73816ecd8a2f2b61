"""Miss rate against training iteration, from the checkpoints of finished runs (``hkd-curve``).

    python -m hkd_d2.tools.curve RUN_DIR [RUN_DIR ...] [--out curve] [--setup Reasonable]

A RUN_DIR is the output folder of a training run (``train_net.py``, the demo, the ablation runner):
its ``config.yaml`` and checkpoints ``model_<iteration>.pth`` (every ``SOLVER.CHECKPOINT_PERIOD``
iterations) and ``model_final.pth``. Every checkpoint is evaluated on the run's first
``DATASETS.TEST`` (a distillation run as its student, without its teacher), once: the results are
kept in ``RUN_DIR/curve.json`` and reused, so a second call, or one with more runs, evaluates only
what is new. Runs are grouped by ``--label`` (default: the name of the run folder's parent, which
is the config name in an ablation's ``OUT/<config>/seed<k>``): the picture ``OUT.png`` draws each
run thin and each group's mean thick; ``OUT.md`` / ``OUT.json`` hold the numbers. A curve still
falling at its last point says the schedule was too short for the run to converge.
"""
import argparse
import json
import logging
import math
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.config import CfgNode

from ..engine.evaluate import StudentCheckpointer, build_test_model
from ..engine.setup import load_config, resolve_device
from .report import format_mean_spread, markdown_table, mean_and_spread, saved_figure, write_json, write_text
from .runs import evaluate

__all__ = ["CURVE_FILE", "run_checkpoints", "run_curve", "group_curves", "curve_table", "plot_curves", "main"]

logger = logging.getLogger(__name__)

# Per-run cache of the evaluated checkpoints: {completed iterations: {setup: MR %}}.
CURVE_FILE = "curve.json"
FINAL_CHECKPOINT = "model_final.pth"
_PERIODIC = re.compile(r"model_(\d+)\.pth$")


def run_checkpoints(run_dir: Path, max_iter: int) -> List[Tuple[int, Path]]:
    """``[(completed iterations, checkpoint)]`` of ``run_dir``, in training order.

    Detectron2 names a periodic checkpoint after the 0-based index of its last iteration
    (``model_0000099.pth`` = 100 iterations done); ``model_final.pth`` follows ``max_iter``.
    """
    found = {}
    for path in run_dir.glob("model_*.pth"):
        match = _PERIODIC.match(path.name)
        if match:
            found[int(match.group(1)) + 1] = path
    final = run_dir / FINAL_CHECKPOINT
    if final.is_file():
        found[max_iter] = final
    return sorted(found.items())


def _run_config(run_dir: Path) -> CfgNode:
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: {run_dir} is not the output folder of a training run")
    cfg = resolve_device(load_config(str(config)))
    if not cfg.DATASETS.TEST:
        raise ValueError(f"{config}: DATASETS.TEST is empty, nothing to evaluate the checkpoints on")
    return cfg


def _evaluate_checkpoint(cfg: CfgNode, checkpoint: Path, output_dir: Path) -> Dict[str, float]:
    model = build_test_model(cfg)
    StudentCheckpointer(model).load(str(checkpoint), checkpointables=[])
    return evaluate(cfg, model, str(output_dir))


def run_curve(run_dir: Path) -> Dict[int, Dict[str, float]]:
    """``{completed iterations: {setup: MR %}}`` of every checkpoint of ``run_dir``, evaluating
    only those not yet in its ``curve.json`` (which is rewritten after each one)."""
    cfg = _run_config(run_dir)
    cache = run_dir / CURVE_FILE
    curve = {int(k): v for k, v in json.loads(cache.read_text()).items()} if cache.is_file() else {}
    checkpoints = run_checkpoints(run_dir, cfg.SOLVER.MAX_ITER)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no model_*.pth checkpoint (train with SOLVER.CHECKPOINT_PERIOD "
                                "smaller than SOLVER.MAX_ITER to get points before the end)")
    for iteration, checkpoint in checkpoints:
        if iteration in curve:
            continue
        logger.info(f"{run_dir}: evaluating {checkpoint.name} ({iteration} iterations)")
        curve[iteration] = _evaluate_checkpoint(cfg, checkpoint, run_dir / "curve" / f"iter{iteration}")
        write_json(cache, {str(k): curve[k] for k in sorted(curve)})
    return dict(sorted(curve.items()))


def group_curves(curves: Mapping[str, Mapping[int, Mapping[str, float]]], labels: Mapping[str, str],
                 setup: str) -> Dict[str, Dict[int, Dict[str, float]]]:
    """Per label and iteration, :func:`mean_and_spread` of ``setup``'s MR over the label's runs
    (``curves``: run -> iteration -> setup -> MR; ``labels``: run -> label)."""
    grouped: Dict[str, Dict[int, List[float]]] = {}
    for run, curve in curves.items():
        for iteration, mr in curve.items():
            grouped.setdefault(labels[run], {}).setdefault(iteration, []).append(mr[setup])
    return {label: {it: mean_and_spread(v) for it, v in sorted(points.items())} for label, points in grouped.items()}


def curve_table(grouped: Mapping[str, Mapping[int, Mapping[str, float]]]) -> str:
    """Markdown: one row per iteration, one column per label (mean ± std over its runs, n)."""
    iterations = sorted({it for points in grouped.values() for it in points})
    labels = list(grouped)

    def cell(stats: Optional[Mapping[str, float]]) -> str:
        if stats is None:
            return ""
        return f"{format_mean_spread(stats)} (n={stats['n']})"

    rows = [[str(it)] + [cell(grouped[label].get(it)) for label in labels] for it in iterations]
    return markdown_table(["iterations"] + labels, rows)


def _finite(mr: Optional[float]) -> float:
    """An MR of the cache, NaN (a gap in the picture) where it is undefined (JSON null)."""
    return math.nan if mr is None else mr


def plot_curves(curves: Mapping[str, Mapping[int, Mapping[str, float]]], labels: Mapping[str, str], setup: str,
                path: Path) -> Path:
    """``path`` (PNG): each run's MR of ``setup`` against iterations (thin), each label's mean (thick)."""
    grouped = group_curves(curves, labels, setup)
    colors = {label: f"C{i}" for i, label in enumerate(grouped)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with saved_figure(path, figsize=(7, 4.5)) as ax:
        for run, curve in curves.items():
            its = sorted(curve)
            ax.plot(its, [_finite(curve[i][setup]) for i in its], color=colors[labels[run]], alpha=0.3, linewidth=0.8)
        for label, points in grouped.items():
            its = sorted(points)
            ax.plot(its, [points[i]["mean"] for i in its], color=colors[label], linewidth=2.5, marker="o",
                    label=f"{label} (mean of {max(p['n'] for p in points.values())})")
        ax.set_xlabel("training iterations")
        ax.set_ylabel(f"MR {setup} (%, lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of training runs (config.yaml + checkpoints)")
    parser.add_argument("--label", nargs="+", help="one label per run (default: the run folder's parent's name)")
    parser.add_argument("--setup", default="Reasonable", help="the miss-rate setup drawn and tabulated")
    parser.add_argument("--out", default="curve", help="writes OUT.png, OUT.md and OUT.json")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[int, Dict[str, float]]]:
    from detectron2.utils.logger import setup_logger

    setup_logger(name="hkd")
    args = parse_args(argv)
    runs = [Path(r) for r in args.runs]
    if args.label is not None and len(args.label) != len(runs):
        raise SystemExit(f"--label: {len(args.label)} labels for {len(runs)} runs")
    labels = {str(r): (args.label[i] if args.label else r.resolve().parent.name) for i, r in enumerate(runs)}
    curves = {}
    for index, run in enumerate(runs, start=1):
        logger.info(f"run {index}/{len(runs)}: {run}")
        curves[str(run)] = run_curve(run)
    missing = sorted({r for r, c in curves.items() for mr in c.values() if args.setup not in mr})
    if missing:
        raise SystemExit(f"--setup {args.setup}: not evaluated in {missing}")
    grouped = group_curves(curves, labels, args.setup)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"setup": args.setup, "runs": {r: {"label": labels[r], "curve": c}
                                                                          for r, c in curves.items()},
                                          "groups": grouped})
    write_text(out.with_suffix(".md"), f"MR {args.setup} (%) against training iterations\n\n" + curve_table(grouped)
               + "\n")
    plot_curves(curves, labels, args.setup, out.with_suffix(".png"))
    logger.info(f"Wrote {out}.png / .md / .json")
    return grouped


if __name__ == "__main__":
    main()

"""``hkd-compress``: learn a compact student backbone block by block under a compute budget.

    hkd-compress --teacher-config configs/synthetic/teacher_R50_FPN_PyRoIAlign.yaml \\
        --teacher-weights output/synthetic/teacher_R50_FPN_PyRoIAlign/model_final.pth \\
        --dataset synthetic_citypersons_train --max-gmacs 1.0 1.5 2.5 --input-size 240x320 --out compress

Writes, per budget, a compact student config (plain and HKD) with its stitched initial weights,
then a budget-vs-cost report (see :mod:`hkd_d2.compress.pipeline` for the folder layout).
"""
import argparse
import os
from typing import Dict, Optional, Sequence, Tuple

from ..compress import CandidateSet, CompressOptions, Schedule, run_compress
from ..engine.setup import setup_hkd_logger
from ..model_zoo import get_config_file

__all__ = ["parse_args", "options_from_args", "main"]

STUDENT_BASE = "synthetic/student_R18_FPN.yaml"
HKD_BASE = "synthetic/hkd_R50_to_R18.yaml"
COMPARE = ("synthetic/student_R18_FPN.yaml", "synthetic/student_MobileNetV2_FPN.yaml")


def _size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW (e.g. 240x320)") from None
    return h, w


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("teacher, data, budgets, output")
    g.add_argument("--teacher-config", required=True, help="teacher YAML (an R-FPN detector)")
    g.add_argument("--teacher-weights", required=True, help="teacher checkpoint")
    g.add_argument("--dataset", default="synthetic_citypersons_train", help="registered training data set")
    g.add_argument("--max-gmacs", nargs="+", default=[], help="backbone GMACs bounds at --input-size, one per "
                   "budget; 0.5x = half the teacher's")
    g.add_argument("--max-params", nargs="+", default=[], help="backbone parameter bounds in millions (or 0.5x)")
    g.add_argument("--input-size", type=_size, default=(240, 320), help="HxW the GMACs and latency are measured at")
    g.add_argument("--out", required=True, help="output folder (must not exist)")
    g = p.add_argument_group("candidate blocks of every stage")
    g.add_argument("--kinds", nargs="+", default=list(CandidateSet.kinds), help="COMPACT_BLOCK_REGISTRY names")
    g.add_argument("--depths", nargs="+", type=int, default=list(CandidateSet.depths), help="blocks per stage")
    g.add_argument("--widths", nargs="+", type=float, default=list(CandidateSet.widths),
                   help="block widths as multiples of the stage's interface channels")
    g.add_argument("--expansions", nargs="+", type=float, default=list(CandidateSet.expansions),
                   help="inverted-residual expansion factors")
    g.add_argument("--interface-channels", nargs=4, type=int, default=None,
                   help="student channels after res2..res5 (default: the teacher's 3x3 widths, 64 128 256 512 for R50)")
    g.add_argument("--norm", default=None, help="norm of the student blocks (default: the teacher's MODEL.RESNETS.NORM)")
    g = p.add_argument_group("block-wise training")
    g.add_argument("--steps", type=int, default=Schedule.steps, help="training steps (all candidates at once)")
    g.add_argument("--lr", type=float, default=Schedule.lr, help="Adam learning rate (cosine decay to 0)")
    g.add_argument("--batch-size", type=int, default=2, help="images per step")
    g.add_argument("--train-size", type=_size, default=None, help="HxW of the training images (default --input-size)")
    g.add_argument("--eval-images", type=int, default=8, help="images held out to measure the block losses on")
    g.add_argument("--pca-batches", type=int, default=4, help="batches the stage interface is fitted on")
    g.add_argument("--log-period", type=int, default=Schedule.log_period, help="steps between progress lines")
    g = p.add_argument_group("students written")
    g.add_argument("--student-base", default=STUDENT_BASE, help="_BASE_ of the compact student configs (file or shipped name)")
    g.add_argument("--hkd-base", default=HKD_BASE, help="_BASE_ of the compact HKD configs (file or shipped name; '' = none)")
    g.add_argument("--fpn", choices=("teacher", "random"), default="teacher", help="FPN initialisation")
    g.add_argument("--heads", choices=("teacher", "random"), default="teacher", help="RPN and box head initialisation")
    g.add_argument("--run-root", default="./output/compress", help="OUTPUT_DIR prefix of the written configs")
    g = p.add_argument_group("report")
    g.add_argument("--compare", nargs="*", default=list(COMPARE), help="reference detector configs in the table")
    g.add_argument("--latency-repeats", type=int, default=3, help="timed runs per latency (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _config_file(name: str) -> str:
    """A config file path, or the path of a shipped config name (``synthetic/...yaml``)."""
    return os.path.abspath(name) if os.path.isfile(name) else get_config_file(name)


def options_from_args(args: argparse.Namespace) -> CompressOptions:
    return CompressOptions(
        teacher_config=_config_file(args.teacher_config), teacher_weights=args.teacher_weights,
        dataset=args.dataset, max_gmacs=args.max_gmacs, max_params=args.max_params, out=args.out,
        student_base=_config_file(args.student_base), hkd_base=_config_file(args.hkd_base) if args.hkd_base else None,
        input_size=args.input_size, train_size=args.train_size,
        candidates=CandidateSet(tuple(args.kinds), tuple(args.depths), tuple(args.widths), tuple(args.expansions)),
        interface=args.interface_channels, norm=args.norm,
        schedule=Schedule(args.steps, args.lr, args.log_period), batch_size=args.batch_size,
        eval_images=args.eval_images, pca_batches=args.pca_batches, fpn=args.fpn, heads=args.heads,
        compare=[_config_file(c) for c in args.compare], latency_repeats=args.latency_repeats,
        device=args.device, seed=args.seed, run_root=args.run_root)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run ``hkd-compress``; return its report."""
    setup_hkd_logger()
    return run_compress(options_from_args(parse_args(argv)))


if __name__ == "__main__":
    main()

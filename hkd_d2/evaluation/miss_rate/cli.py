"""Command line of the miss-rate evaluation: ``python -m hkd_d2.evaluation.miss_rate GT DT``."""
import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ...reading import gc_paused
from ..plots import plot_mr_fppi
from .inputs import MissRateInputError, load_detections, load_ground_truth
from .matching import miss_rate_curves
from .protocols import PROTOCOLS, get_protocol

__all__ = ["main"]

logger = logging.getLogger(__name__)

def _format_table(results: Mapping[str, float]) -> str:
    width = max(len(k) for k in results) if results else 5
    lines = [f"{'setup':<{width}}  MR (%)  MR (fraction)", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {100 * mr:6.2f}  {mr:.6f}" for name, mr in results.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m hkd_d2.evaluation.miss_rate GT DT [options]``."""
    parser = argparse.ArgumentParser(description="Log-average miss rate (MR^-2) of pedestrian detections.")
    parser.add_argument("gt", help="ground truth: COCO-style JSON, toolbox gt-*.mat, or an ECP label folder")
    parser.add_argument("dt", help="detections: COCO results JSON, toolbox dt-*.mat, or an ECP detection folder")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="citypersons")
    parser.add_argument("--setups", nargs="+", help="setups to evaluate (default: the protocol's standard ones)")
    parser.add_argument("--json", action="store_true", help="print one JSON object {setup: miss rate fraction}")
    parser.add_argument("--plot", help="write MR-FPPI curves to this image file")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")

    protocol = get_protocol(args.protocol)
    setups = args.setups
    try:
        with gc_paused():  # parsed files are freed before it resumes
            gt = load_ground_truth(args.gt, protocol)
            if gt.final and not setups:
                setups = ["Reasonable"]
                logger.info("%s holds final ignore flags; evaluating setup 'Reasonable'", args.gt)
            dt = load_detections(args.dt, gt, protocol)
            curves = miss_rate_curves(gt, dt, protocol, setups)
    except (MissRateInputError, FileNotFoundError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    results = {name: c.log_average for name, c in curves.items()}
    if args.plot:
        plot_mr_fppi({f"{Path(args.dt).stem} {name}": c for name, c in curves.items()}, args.plot,
                     title=f"{protocol.name}: {Path(args.dt).name}")
        logger.info("wrote %s", args.plot)
    if args.json:
        print(json.dumps({k: (None if math.isnan(v) else v) for k, v in results.items()}))
    else:
        print(_format_table(results))
    return 0



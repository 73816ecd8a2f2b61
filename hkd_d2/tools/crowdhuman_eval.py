"""``hkd-crowdhuman-eval``: CrowdHuman AP@0.5, MR^-2 and JI of a CrowdDet-style detection dump
(the official evaluation's files: an annotation ``.odgt`` and a detection ``.odgt``)."""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..data.crowdhuman import read_json_lines, read_odgt
from ..data.pedestrian_json import PedestrianDataError
from ..evaluation.crowdhuman import CrowdHumanImage, CrowdHumanInputError, crowdhuman_metrics, images_from_odgt
from ..reading import gc_paused

__all__ = ["read_images", "evaluate_files", "main"]


def read_images(gt_path: Union[str, Path], dump_path: Union[str, Path]) -> List[CrowdHumanImage]:
    """The images of an annotation ``.odgt`` and a detection dump (see :func:`images_from_odgt`)."""
    dump = [entry for _, entry in read_json_lines(dump_path, "detection dump")]
    return images_from_odgt(read_odgt(gt_path), dump, source=str(dump_path))


def evaluate_files(gt_path: Union[str, Path], dump_path: Union[str, Path], ji: bool = True) -> Dict[str, float]:
    """:func:`crowdhuman_metrics` of two files, the cyclic garbage collector paused (the parsed
    lines are freed before it resumes)."""
    with gc_paused():
        return crowdhuman_metrics(read_images(gt_path, dump_path), ji)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hkd-crowdhuman-eval GT.odgt DT.odgt``: AP, MR^-2 and JI of a CrowdDet-style detection dump."""
    parser = argparse.ArgumentParser(description="CrowdHuman AP@0.5, MR^-2 and JI of a detection dump.")
    parser.add_argument("gt", help="annotation .odgt (e.g. annotation_val.odgt)")
    parser.add_argument("dt", help="detection dump .odgt: one line per image with ID, width, height, dtboxes")
    parser.add_argument("--json", action="store_true", help="print one JSON object {AP, MR, JI} (fractions)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_files(args.gt, args.dt)
    except (CrowdHumanInputError, PedestrianDataError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: (None if math.isnan(v) else v) for k, v in metrics.items()}))
    else:
        print("\n".join(f"{k:<3} {100 * v:6.2f} %  {v:.6f}" for k, v in metrics.items()))
    return 0

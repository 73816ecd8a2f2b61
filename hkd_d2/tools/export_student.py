"""``hkd-export`` / ``tools/export_student.py``: export the student of an HKD run as a plain
Detectron2 detector (``student.pth`` + ``student.yaml``).

    hkd-export --config-file configs/synthetic/hkd_R50_to_R18.yaml \\
        --weights output/synthetic/hkd_R50_to_R18/model_final.pth --output student/
"""
import argparse
from typing import Optional, Sequence, Tuple

from ..engine.setup import load_config, setup_hkd_logger
from ..export import export_student

__all__ = ["main", "parse_args"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation config")
    parser.add_argument("--weights", required=True, help="checkpoint written by train_net.py")
    parser.add_argument("--output", required=True, help="folder for student.pth and student.yaml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, str]:
    args = parse_args(argv)
    logger = setup_hkd_logger()
    weights, config = export_student(load_config(args.config_file, args.opts), args.weights, args.output)
    logger.info(f"Wrote {weights} and {config}")
    return weights, config


if __name__ == "__main__":
    main()

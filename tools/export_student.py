#!/usr/bin/env python
"""Export the student of an HKD run as a plain Detectron2 detector (student.pth + student.yaml).

    python tools/export_student.py --config-file configs/synthetic/hkd_R50_to_R18.yaml \
        --weights output/synthetic/hkd_R50_to_R18/model_final.pth --output output/student_export
"""
import argparse
import logging

from detectron2.utils.logger import setup_logger

import hkd_d2  # noqa: F401  (registers HKDDistiller, PedestrianROIHeads, PyRoIAlign)
from hkd_d2.engine.setup import load_config
from hkd_d2.export import export_student


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation config")
    parser.add_argument("--weights", required=True, help="checkpoint written by train_net.py")
    parser.add_argument("--output", required=True, help="folder for student.pth and student.yaml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logger(name="hkd_d2")
    cfg = load_config(args.config_file, args.opts)
    weights, config = export_student(cfg, args.weights, args.output)
    logging.getLogger("hkd_d2").info(f"Wrote {weights} and {config}")


if __name__ == "__main__":
    main()

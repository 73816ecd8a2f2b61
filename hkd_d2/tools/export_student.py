"""``hkd-export`` / ``tools/export_student.py``: export the student of an HKD run: plain Detectron2
(student.pth + student.yaml), TorchScript (student.ts), ONNX (student.onnx; with --int8 also
student.int8.onnx and its miss rate before/after).

    hkd-export --config-file configs/synthetic/hkd_R50_to_R18.yaml \\
        --weights output/synthetic/hkd_R50_to_R18/model_final.pth --output student \\
        --format pytorch torchscript onnx [--int8 --calib-images 32]
"""
import argparse
import logging
import os
from typing import Dict, Optional, Sequence

from detectron2.data import DatasetCatalog

from ..data.register import UnregisteredDatasetError, register_config_datasets, require_registered
from ..deploy import DeployedPredictor, RuntimeOptions
from ..engine.setup import load_config, setup_hkd_logger
from ..export import ONNX_FILE, ONNX_OPSET, calibration_images, export_formats, format_names
from .report import write_json
from .runs import evaluate

__all__ = ["parse_args", "int8_miss_rates", "main"]

logger = logging.getLogger("hkd_d2.export")

# Calibration images for --int8 (evenly spaced over the first training set).
DEFAULT_CALIB_IMAGES = 100
INT8_REPORT = "int8_miss_rate.json"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation (or student) config")
    parser.add_argument("--weights", required=True, help="checkpoint written by train_net.py")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--format", nargs="+", default=["pytorch"], choices=format_names(),
                        help="formats to write (any subset)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument("--int8", action="store_true", help="also write student.int8.onnx (static quantization)")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES,
                        help="int8 calibration images from DATASETS.TRAIN[0]")
    parser.add_argument("--eval-dataset", default=None,
                        help="data set for the int8 MR before/after (default DATASETS.TEST[0]; 'none' skips it)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def int8_miss_rates(cfg, written: Dict[str, str], dataset: str, out_dir: str) -> Dict[str, Dict[str, float]]:
    """MR (percent, per setup) of the fp32 and int8 ONNX students on ``dataset``, each at the
    graph's own score threshold (every detection it gives), run with ``cfg``'s ``EXPORT.RUNTIME``
    settings."""
    results = {}
    options = RuntimeOptions.from_config(cfg)
    for name in ("onnx", "onnx_int8"):
        predictor = DeployedPredictor(written[name], score_threshold=0.0, options=options)
        results[name] = evaluate(cfg, predictor.model, os.path.join(out_dir, f"eval_{name}"), dataset)
    return results


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    args = parse_args(argv)
    setup_hkd_logger()
    if args.int8 and "onnx" not in args.format:
        raise ValueError("--int8 quantizes the ONNX student: add onnx to --format")
    cfg = load_config(args.config_file, args.opts)
    register_config_datasets(cfg)
    if args.int8 and not cfg.DATASETS.TRAIN:
        raise ValueError(f"{args.config_file}: --int8 calibrates on DATASETS.TRAIN[0], which is empty")
    dataset: Optional[str] = args.eval_dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    evaluates = args.int8 and dataset and dataset.lower() != "none"
    try:  # before anything is written
        if args.int8:
            require_registered(cfg.DATASETS.TRAIN[0], "DATASETS.TRAIN")
        if evaluates:
            require_registered(dataset, "--eval-dataset" if args.eval_dataset else "DATASETS.TEST")
    except UnregisteredDatasetError as e:
        raise SystemExit(f"{args.config_file}: {e}") from None
    calibration = None
    if args.int8:
        records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])

        def calibration():
            # Built after the fp32 export: the deployed predictor reads its preprocessing from the file.
            preprocess = DeployedPredictor(os.path.join(args.output, ONNX_FILE)).preprocess
            return calibration_images(records, args.calib_images, preprocess)()

    written = export_formats(cfg, args.weights, args.output, args.format, opset=args.opset, calibration=calibration)
    if evaluates:
        mr = int8_miss_rates(cfg, written, dataset, args.output)
        write_json(os.path.join(args.output, INT8_REPORT), {"dataset": dataset, "MR": mr})
        for setup in mr["onnx"]:
            logger.info(f"MR {setup} on {dataset}: ONNX fp32 {mr['onnx'][setup]:.2f} -> "
                        f"int8 {mr['onnx_int8'][setup]:.2f} ({mr['onnx_int8'][setup] - mr['onnx'][setup]:+.2f})")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()

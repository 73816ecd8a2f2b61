"""Miss-rate (MR^-2) evaluation: protocol core, Detectron2 evaluator, MR-FPPI plots."""
from .miss_rate import (
    PROTOCOLS,
    Detections,
    GroundTruth,
    MissRateCurve,
    Protocol,
    Setup,
    evaluate_miss_rate,
    load_detections,
    load_ground_truth,
    miss_rate_curves,
)
from .evaluator import EVALUATOR_REGISTRY, MissRateEvaluator, build_evaluator
from .plots import plot_mr_fppi

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "Setup",
    "GroundTruth",
    "Detections",
    "MissRateCurve",
    "evaluate_miss_rate",
    "miss_rate_curves",
    "load_ground_truth",
    "load_detections",
    "MissRateEvaluator",
    "EVALUATOR_REGISTRY",
    "build_evaluator",
    "plot_mr_fppi",
]

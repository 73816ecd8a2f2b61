"""Pedestrian evaluation: miss-rate protocols (CityPersons, Caltech, ECP), CrowdHuman metrics,
Detectron2 evaluators picked by metadata, MR-FPPI plots."""
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
from .crowdhuman import crowdhuman_metrics
from .evaluator import EVALUATOR_OF_PROTOCOL, EVALUATOR_REGISTRY, CrowdHumanEvaluator, MissRateEvaluator, build_evaluator
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
    "CrowdHumanEvaluator",
    "crowdhuman_metrics",
    "EVALUATOR_OF_PROTOCOL",
    "EVALUATOR_REGISTRY",
    "build_evaluator",
    "plot_mr_fppi",
]

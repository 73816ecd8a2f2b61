"""Detectors for inference: one builder from config + weights, and single-image inputs."""
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from ..checkpoint import load_detector_weights
from ..engine.setup import resolve_device
from ..export import load_student_config

__all__ = ["build_predictor", "model_inputs", "predictor_from_config"]


def build_predictor(cfg: CfgNode, weights: Optional[str] = None) -> DefaultPredictor:
    """A :class:`DefaultPredictor` (eval mode, on ``cfg.MODEL.DEVICE``) for ``cfg``.

    ``weights`` (default ``cfg.MODEL.WEIGHTS``; empty = random initialisation) are loaded with
    the project's strict checkpointer, so a missing file or another architecture's weights raise
    an error naming the file. The detector itself is ``predictor.model``.
    """
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(cfg)
    if weights:
        load_detector_weights(predictor.model, weights)
    return predictor


def predictor_from_config(
    config_file: str,
    opts: Sequence[str] = (),
    weights: Optional[str] = None,
    score_threshold: Optional[float] = None,
) -> Tuple[DefaultPredictor, float]:
    """A predictor for ``config_file`` + ``opts`` (on ``cpu`` where a CUDA device is absent) and
    the score threshold it keeps detections from: ``score_threshold``, which then replaces
    ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` (as Detectron2's demo does), else the config's value.
    ``weights`` default to ``MODEL.WEIGHTS`` (a relative one is taken next to the config file, as in an
    exported ``student.yaml``)."""
    cfg = resolve_device(load_student_config(config_file, list(opts)))
    if score_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    return build_predictor(cfg, weights), cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST


def model_inputs(image_bgr: np.ndarray, height: int, width: int) -> List[Dict[str, torch.Tensor]]:
    """One-image batch for a detector, ``image_bgr`` (H0, W0, 3) resized to exactly ``height x width``.

    Unlike :class:`DefaultPredictor` (which resizes by ``INPUT.MIN_SIZE_TEST``), this fixes the
    network input size, as latency figures "per 600x800 image" need. The image tensor is (3, H, W).
    """
    resized = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    image = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return [{"image": image, "height": height, "width": width}]

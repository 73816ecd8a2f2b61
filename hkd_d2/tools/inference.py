"""Detectors for inference: one builder from config + weights, and single-image inputs."""
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from ..checkpoint import load_detector_weights

__all__ = ["build_predictor", "model_inputs"]


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


def model_inputs(image_bgr: np.ndarray, height: int, width: int) -> List[Dict[str, torch.Tensor]]:
    """One-image batch for a detector, ``image_bgr`` (H0, W0, 3) resized to exactly ``height x width``.

    Unlike :class:`DefaultPredictor` (which resizes by ``INPUT.MIN_SIZE_TEST``), this fixes the
    network input size, as latency figures "per 600x800 image" need. The image tensor is (3, H, W).
    """
    resized = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    image = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return [{"image": image, "height": height, "width": width}]

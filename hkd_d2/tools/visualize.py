"""Detections drawn on images with Detectron2's Visualizer."""
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

__all__ = ["draw_detections"]

# Metadata name that gives the Visualizer the single class name.
_PERSON_METADATA = "hkd_d2_person"


def draw_detections(image_bgr: np.ndarray, instances: Instances, score_threshold: float = 0.5) -> np.ndarray:
    """``image_bgr`` (H, W, 3) uint8 with the boxes and scores of ``instances`` (pred_boxes,
    scores, pred_classes; image coordinates) whose score is at least ``score_threshold``.
    Returns a new BGR image of the same size."""
    metadata = MetadataCatalog.get(_PERSON_METADATA)
    if not metadata.get("thing_classes"):
        metadata.set(thing_classes=["person"])
    instances = instances.to("cpu")
    keep = instances[instances.scores >= score_threshold]
    drawn = Visualizer(image_bgr[:, :, ::-1], metadata).draw_instance_predictions(keep)
    return np.ascontiguousarray(drawn.get_image()[:, :, ::-1])

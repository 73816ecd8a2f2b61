"""Model parts of hkd_d2; importing this package registers them with Detectron2's registries."""
from . import backbone, distill, pcl, pyramid_pooler, recorders, roi_heads, rpn  # noqa: F401  (registration side effects)
from .distiller import Distiller, HKDDistiller, StepLosses
from .pcl import PCLDistiller, PCLROIHeads
from .pyramid_pooler import ROI_POOLER_REGISTRY, PyRoIAlign, build_box_pooler
from .recorders import RECORDER_REGISTRY
from .roi_heads import PedestrianROIHeads
from .rpn import PedestrianRPN

__all__ = [
    "Distiller",
    "HKDDistiller",
    "PCLDistiller",
    "PCLROIHeads",
    "RECORDER_REGISTRY",
    "ROI_POOLER_REGISTRY",
    "StepLosses",
    "build_box_pooler",
    "PyRoIAlign",
    "PedestrianROIHeads",
    "PedestrianRPN",
]

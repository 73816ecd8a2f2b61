"""Model parts of hkd_d2; importing this package registers them with Detectron2's registries."""
from . import backbone, distill, pyramid_pooler, roi_heads, rpn  # noqa: F401  (registration side effects)
from .pyramid_pooler import ROI_POOLER_REGISTRY, PyRoIAlign, build_box_pooler
from .roi_heads import PedestrianROIHeads
from .rpn import PedestrianRPN

__all__ = [
    "ROI_POOLER_REGISTRY",
    "build_box_pooler",
    "PyRoIAlign",
    "PedestrianROIHeads",
    "PedestrianRPN",
]
from . import distiller, teacher  # noqa: F401  (registers HKDDistiller)

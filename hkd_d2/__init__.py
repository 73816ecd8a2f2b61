"""hkd_d2: hierarchical knowledge distillation for pedestrian detection, as a Detectron2 add-on.

Importing the package registers its datasets, models, poolers, heads, distillation terms and
evaluators with Detectron2's registries.
"""
from .config import add_hkd_config
from . import data, engine, evaluation, modeling  # noqa: F401  (registration side effects)

__all__ = ["add_hkd_config"]
__version__ = "0.1.0"

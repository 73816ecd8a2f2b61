"""hkd_d2: hierarchical knowledge distillation for pedestrian detection, as a Detectron2 add-on.

Importing the package registers its datasets, models, poolers, heads, distillation terms and
evaluators with Detectron2's registries.
"""
import warnings

with warnings.catch_warnings():
    # Detectron2 (modeling.box_regression) and fvcore (nn.focal_loss) script functions with
    # torch.jit.script when first imported, which recent PyTorch answers with a deprecation
    # FutureWarning per importing module; nothing a user of hkd_d2 can act on. Only these imports.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                            module=r"torch\.jit\._script")
    from .config import add_hkd_config
    from . import data, engine, evaluation, modeling  # noqa: F401  (registration side effects)

__all__ = ["add_hkd_config"]
__version__ = "0.1.0"

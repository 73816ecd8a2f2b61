"""Loading weights: Detectron2 checkpoints and torchvision ImageNet ResNets, with clear errors.

:class:`HKDCheckpointer` is Detectron2's ``DetectionCheckpointer`` plus three things:

* a missing weights file raises ``FileNotFoundError`` naming it (not a bare assert);
* a torchvision ResNet ``state_dict`` (``conv1.weight``, ``layer1.0.bn1.weight``, ...) is converted
  on load to Detectron2's backbone names (``backbone.bottom_up.stem.conv1.weight``, ...);
* weights of another architecture raise :class:`WeightsMismatchError` listing the missing,
  unexpected and wrongly shaped keys, instead of a warning that is easy to miss.

A backbone-only checkpoint (a converted ImageNet ResNet, or Detectron2's / pycls' ImageNet
``.pkl``) may leave the FPN and heads uninitialised: only its own keys must all match.
"""
import logging
import os
import re
from typing import Dict, List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "HKDCheckpointer",
    "WeightsMismatchError",
    "convert_torchvision_resnet",
    "is_torchvision_resnet",
    "load_detector_weights",
]

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone.bottom_up."
# Box-predictor layers whose shape depends on the number of classes (fine-tuning from COCO).
CLASS_DEPENDENT_PREFIX = "roi_heads.box_predictor."

# torchvision ResNet name fragments -> Detectron2 ResNet name fragments, applied in order.
_TORCHVISION_TO_D2 = (
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.bn(\d)\.", lambda m: f".conv{m.group(1)}.norm."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
)


class WeightsMismatchError(RuntimeError):
    """Weights that do not fit the model: names the file and the offending keys."""

    def __init__(self, path: str, missing: List[str], unexpected: List[str], shapes: List[Tuple]):
        lines = [f"Weights in {path} do not fit the model (another architecture or config?)."]
        for title, keys in (("missing in the file", missing), ("unexpected in the file", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} keys {title}: {_abbreviate(keys)}")
        if shapes:
            shown = ", ".join(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in shapes[:5])
            lines.append(f"  {len(shapes)} keys with another shape: {shown}")
        super().__init__("\n".join(lines))
        self.path, self.missing, self.unexpected, self.shapes = path, missing, unexpected, shapes


def _abbreviate(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def is_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True for a torchvision ``resnetXX().state_dict()`` (or one saved from it)."""
    return "conv1.weight" in state_dict and any(k.startswith("layer1.0.") for k in state_dict)


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to Detectron2 backbone keys.

    The classifier (``fc.*``) and BatchNorm's ``num_batches_tracked`` counters are dropped.
    torchvision's bottlenecks stride in the 3x3 conv: train such a backbone with
    ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and torchvision's RGB pixel mean/std (see README).
    """
    converted = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        new = name
        for pattern, repl in _TORCHVISION_TO_D2:
            new = re.sub(pattern, repl, new)
        converted[BACKBONE_PREFIX + new] = value
    return converted


class HKDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with torchvision conversion and strict, explained key checks.

    Args:
        allow_new_classes: accept another class count in the box predictor (fine-tuning a
            detector trained on other classes); those layers keep their fresh initialisation.
        allow_backbone_only: accept a backbone-only file (ImageNet weights), leaving the FPN
            and heads as initialised; off for a teacher, which must be loaded whole.
        Other arguments as ``DetectionCheckpointer``.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_new_classes: bool = True,
        allow_backbone_only: bool = True,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_new_classes = allow_new_classes
        self.allow_backbone_only = allow_backbone_only
        self._path_being_loaded = ""

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file not found: {path}")
        self._path_being_loaded = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        data = super()._load_file(filename)
        if isinstance(data.get("model"), dict) and is_torchvision_resnet(data["model"]):
            logger.info(f"{filename}: torchvision ResNet weights, converted to Detectron2 names")
            data["model"] = convert_torchvision_resnet(data["model"])
            data["backbone_only"] = True
        if data.get("matching_heuristics", False):
            data["backbone_only"] = True
        return data

    def _load_model(self, checkpoint):
        file_keys = list(checkpoint["model"].keys())
        incompatible = super()._load_model(checkpoint)
        backbone_only = self.allow_backbone_only and (
            checkpoint.get("backbone_only", False)
            or all(k.startswith(BACKBONE_PREFIX) for k in file_keys)
        )
        self._raise_if_mismatched(incompatible, backbone_only)
        return incompatible

    def _raise_if_mismatched(self, incompatible, backbone_only: bool) -> None:
        # BatchNorm's step counters are not weights: files without them still fit.
        missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
        if backbone_only:
            missing = [k for k in missing if k.startswith(BACKBONE_PREFIX)]
        optional = tuple(getattr(self.model, "checkpoint_optional_prefixes", ()))
        missing = [k for k in missing if not (optional and k.startswith(optional))]
        shapes = list(incompatible.incorrect_shapes)
        if self.allow_new_classes:
            shapes = [s for s in shapes if not s[0].startswith(CLASS_DEPENDENT_PREFIX)]
        unexpected = list(incompatible.unexpected_keys)
        if missing or unexpected or shapes:
            raise WeightsMismatchError(self._path_being_loaded, missing, unexpected, shapes)


def load_detector_weights(model: torch.nn.Module, path: str) -> None:
    """Load a whole detector from ``path`` (no optimizer state): every key must fit, else
    ``FileNotFoundError`` / :class:`WeightsMismatchError` naming the file."""
    HKDCheckpointer(model, allow_new_classes=False, allow_backbone_only=False).load(path)


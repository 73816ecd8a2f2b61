"""The student of one budget: its config (``MODEL.COMPACT.*``) and its initial weights.

The weights are the student detector's whole state dict: the teacher's stem, the chosen trained
candidates as res2..res5, the teacher's FPN with each lateral conv ``W`` read through the stage
interface (``W P_k^T``, exact on the interface codes; see :mod:`hkd_d2.compress.interface`),
and the teacher's RPN and box head wherever names and shapes agree (``heads="teacher"``); whatever
is not taken from the teacher keeps the student's fresh initialisation.
"""
import logging
from typing import Dict, List, Sequence

import torch
import yaml
from detectron2.config import CfgNode
from torch import nn

from ..atomic import atomic_output
from ..engine.setup import load_config
from ..modeling.backbone import STAGE_NAMES, StageSpec
from .interface import StageInterface

__all__ = ["compact_overrides", "config_with", "stitch_state_dict", "write_config", "write_weights"]

logger = logging.getLogger(__name__)

BOTTOM_UP = "backbone.bottom_up."
BACKBONE = "backbone."
# Where the stitched parts come from: "teacher" (copied) or "random" (the student's initialisation).
SOURCES = ("teacher", "random")


def compact_overrides(specs: Sequence[StageSpec], stem_channels: int, stem_norm: str, norm: str,
                      teacher_cfg: CfgNode, teacher_fpn: bool = True) -> Dict:
    """Config keys of a compact FPN student with stages ``specs`` and the teacher's input
    conventions (pixel mean/std, channel order), as a nested dict for a YAML file; with
    ``teacher_fpn``, the teacher's FPN (channels, norm, fusion) too."""
    fpn = teacher_cfg.MODEL.FPN
    shared_fpn = {"OUT_CHANNELS": fpn.OUT_CHANNELS, "NORM": fpn.NORM, "FUSE_TYPE": fpn.FUSE_TYPE} if teacher_fpn else {}
    return {
        "MODEL": {
            "BACKBONE": {"NAME": "build_compact_fpn_backbone"},
            "COMPACT": {
                "STEM_OUT_CHANNELS": int(stem_channels),
                "STEM_NORM": stem_norm,
                "NORM": norm,
                "BLOCKS": [s.kind for s in specs],
                "DEPTHS": [s.depth for s in specs],
                "WIDTHS": [s.width for s in specs],
                "EXPANSIONS": [s.expansion for s in specs],
                "OUT_CHANNELS": [s.out_channels for s in specs],
                "OUT_FEATURES": list(STAGE_NAMES),
            },
            "FPN": {"IN_FEATURES": list(STAGE_NAMES), **shared_fpn},
            "PIXEL_MEAN": [float(v) for v in teacher_cfg.MODEL.PIXEL_MEAN],
            "PIXEL_STD": [float(v) for v in teacher_cfg.MODEL.PIXEL_STD],
        },
        "INPUT": {"FORMAT": teacher_cfg.INPUT.FORMAT},
    }


def config_with(base_file: str, overrides: Dict) -> CfgNode:
    """``base_file`` loaded as train_net.py loads it, then ``overrides`` (a nested dict) merged."""
    cfg = load_config(base_file)
    cfg.merge_from_other_cfg(CfgNode(overrides))
    return cfg


def write_config(path, base_file: str, overrides: Dict) -> None:
    """A YAML config ``_BASE_: base_file`` plus ``overrides``, written atomically."""
    text = yaml.safe_dump({"_BASE_": str(base_file), **overrides}, sort_keys=False, default_flow_style=None)
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_weights(path, state: Dict[str, torch.Tensor]) -> None:
    """A checkpoint ``{"model": state}`` that ``MODEL.WEIGHTS`` loads, written atomically."""
    with atomic_output(path) as tmp:
        torch.save({"model": state}, tmp)


def _copy(state: Dict[str, torch.Tensor], source: Dict[str, torch.Tensor], keys: List[str], what: str) -> None:
    """Copy ``keys`` from ``source``; a missing key or another shape raises naming ``what``."""
    wrong = [k for k in keys if k not in source or source[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"The student's {what} cannot take the teacher's weights (missing or other shape: "
                         f"{wrong[:5]}{' ...' if len(wrong) > 5 else ''})")
    for k in keys:
        state[k] = source[k].clone()


def _lateral_names(fpn: nn.Module) -> Dict[str, str]:
    """``{in_feature: state-dict prefix of its lateral conv}`` of a Detectron2 FPN, e.g. ``res2 -> fpn_lateral2.``."""
    names = {id(m): name for name, m in fpn.named_modules()}
    # Detectron2's FPN keeps its lateral convs top-down (res5 first).
    return {f: names[id(m)] + "." for f, m in zip(fpn.in_features, reversed(fpn.lateral_convs))}


def stitch_state_dict(student: nn.Module, teacher: nn.Module, stages: Sequence[nn.Module],
                      interface: StageInterface, fpn: str = "teacher", heads: str = "teacher") -> Dict[str, torch.Tensor]:
    """The initial state dict of ``student`` (a compact FPN detector).

    Args:
        student: the student detector (its state dict gives the keys and the fresh initialisation).
        teacher: the teacher detector (R-FPN).
        stages: the chosen trained candidates of res2..res5 (``nn.Sequential`` of their blocks).
        interface: the stage interface the candidates were trained on.
        fpn, heads: "teacher" (copied as above) or "random" (kept as initialised).
    """
    for name, value in (("fpn", fpn), ("heads", heads)):
        if value not in SOURCES:
            raise ValueError(f"{name} must be one of {SOURCES}, got {value!r}")
    state = {k: v.clone() for k, v in student.state_dict().items()}
    source = teacher.state_dict()
    _copy(state, source, [k for k in state if k.startswith(BOTTOM_UP + "stem.")], "stem (MODEL.COMPACT.STEM_*)")
    for name, module in zip(STAGE_NAMES, stages):
        for key, value in module.state_dict().items():
            target = f"{BOTTOM_UP}{name}.{key}"
            if target not in state or state[target].shape != value.shape:
                raise ValueError(f"Stage {name} of the student has no {target} of shape {tuple(value.shape)}")
            state[target] = value.detach().clone()
    if fpn == "teacher":
        fused = dict(source)
        for feature, prefix in _lateral_names(student.backbone).items():
            key = BACKBONE + prefix + "weight"
            fused[key] = interface.decode_conv(source[key], STAGE_NAMES.index(feature) + 1)
        _copy(state, fused, [k for k in state if k.startswith(BACKBONE) and not k.startswith(BOTTOM_UP)],
              "FPN (MODEL.FPN.*; use --fpn random for another FPN than the teacher's)")
    if heads == "teacher":
        shared = [k for k in state if not k.startswith(BACKBONE) and k in source and source[k].shape == state[k].shape]
        _copy(state, source, shared, "heads")
        kept = sorted(k for k in state if not k.startswith(BACKBONE) and k not in shared)
        if kept:
            logger.info(f"Heads taken from the teacher except {len(kept)} tensors (not in the teacher or of "
                        f"another shape), which keep their initialisation: {kept[:5]}{' ...' if len(kept) > 5 else ''}")
    return state

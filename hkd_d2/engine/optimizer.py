"""The optimizer: Detectron2's ``build_optimizer``, with learning-rate factors for named parameters.

Detectron2 builds the SGD parameter groups (norm / bias settings, gradient clipping); the add-on
then moves the parameters of the modules :func:`lr_factors` names into groups of their own whose
learning rate is the factor times their group's (the LR scheduler, built afterwards, scales every
group alike). With every factor 1, the optimizer is Detectron2's, unchanged.
"""
from typing import Dict, Mapping

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_detectron2_optimizer
from torch import nn

__all__ = ["lr_factors", "apply_lr_factors", "build_optimizer"]

# Parameter-name prefix (as in the model's named_parameters) of PyRoIAlign's fusion conv.
FUSE_PREFIX = "roi_heads.box_pooler.fuse."


def lr_factors(cfg: CfgNode) -> Dict[str, float]:
    """``{parameter-name prefix: learning-rate factor}`` of ``cfg``, factors other than 1 only."""
    factors = {FUSE_PREFIX: cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_LR_FACTOR}
    return {prefix: float(f) for prefix, f in factors.items() if f != 1.0}


def apply_lr_factors(optimizer: torch.optim.Optimizer, model: nn.Module, factors: Mapping[str, float]) -> None:
    """Move the parameters of ``model`` whose names start with a prefix of ``factors`` out of their
    group into a copy of it whose ``lr`` is multiplied by the prefix's factor."""
    scaled = {id(p): f for name, p in model.named_parameters() for prefix, f in factors.items()
              if name.startswith(prefix)}
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in scaled]
        if not moved:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in scaled]
        settings = {k: v for k, v in group.items() if k != "params"}
        for factor in sorted({scaled[id(p)] for p in moved}):
            optimizer.add_param_group({**settings, "lr": settings["lr"] * factor,
                                       "params": [p for p in moved if scaled[id(p)] == factor]})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Detectron2's optimizer for ``model``, with the learning-rate factors of :func:`lr_factors`."""
    optimizer = build_detectron2_optimizer(cfg, model)
    factors = lr_factors(cfg)
    if factors:
        apply_lr_factors(optimizer, model, factors)
    return optimizer

"""The distillation hook: the loss-weight schedule and the per-term metrics of a distiller.

Before each iteration :class:`DistillationHook` sets ``distill_scale`` on the (unwrapped) model,
ramping linearly from 0 at iteration 0 to 1 at ``MODEL.DISTILL.WARMUP_ITERS``; after it, the
scale and the model's ``distill_stats`` (raw, unweighted term values such as ``distill/pd``)
go to the EventStorage, hence to metrics.json and TensorBoard. The trainer must register it
before its writers so each iteration's values are written.
"""
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY

from ..modeling.distiller import HKDDistiller
from .prototype_hook import PrototypeHook

__all__ = ["DistillationHook", "build_distillation_hooks", "linear_warmup"]


def linear_warmup(iteration: int, warmup_iters: int) -> float:
    """Scale ``min(1, iteration / warmup_iters)``; 1 throughout when ``warmup_iters`` is 0."""
    if warmup_iters <= 0:
        return 1.0
    return min(1.0, iteration / warmup_iters)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class DistillationHook(HookBase):
    """Sets the distillation scale each iteration and records it with the term statistics."""

    def __init__(self, warmup_iters: int):
        """
        Args:
            warmup_iters: iterations over which the scale ramps from 0 to 1 (0 = always 1).
        """
        self.warmup_iters = int(warmup_iters)

    def before_step(self) -> None:
        _unwrap(self.trainer.model).distill_scale = linear_warmup(self.trainer.iter, self.warmup_iters)

    def after_step(self) -> None:
        model = _unwrap(self.trainer.model)
        stats = {
            k: v.item() if isinstance(v, torch.Tensor) else float(v) for k, v in model.distill_stats.items()
        }
        self.trainer.storage.put_scalars(**stats)
        # A schedule value: logged as it is, not median-smoothed like the losses.
        self.trainer.storage.put_scalar("distill/scale", model.distill_scale, smoothing_hint=False)


# Distillation terms that need a hook of their own during training: term name -> hook builder.
TERM_HOOKS: Dict[str, Callable[[CfgNode], HookBase]] = {"GKDDistill": PrototypeHook}


def build_distillation_hooks(cfg: CfgNode) -> List[HookBase]:
    """The hooks a distilling model needs (none when ``MODEL.META_ARCHITECTURE`` does not distill):
    the schedule/metrics hook, plus the hooks of the listed terms that have one."""
    if not issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), HKDDistiller):
        return []
    term_hooks = [TERM_HOOKS[name](cfg) for name in cfg.MODEL.DISTILL.TERMS if name in TERM_HOOKS]
    return [DistillationHook(cfg.MODEL.DISTILL.WARMUP_ITERS), *term_hooks]

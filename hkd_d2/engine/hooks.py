"""The distillation hook: the iteration for the terms' schedules, and the per-term metrics.

Before each iteration :class:`DistillationHook` gives the (unwrapped) distiller the iteration,
from which every term's :class:`~hkd_d2.modeling.distill.DistillSchedule` gives its loss
factors (warm-up over ``MODEL.DISTILL.WARMUP_ITERS``, start iteration, attenuation); after it,
the warm-up factor (``distill/scale``) and the model's ``distill_stats`` (raw, unweighted term
values such as ``distill/pd``) go to the EventStorage, hence to metrics.json and TensorBoard.
The trainer must register it before its writers so each iteration's values are written.
"""
from typing import List

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase

from ..modeling.distill import enabled_term_classes, linear_warmup, unwrap_ddp
from ..modeling.distiller import distills

__all__ = ["DistillationHook", "build_distillation_hooks"]


class DistillationHook(HookBase):
    """Tells the distiller the iteration and records the warm-up factor and the term statistics."""

    def __init__(self, warmup_iters: int):
        """
        Args:
            warmup_iters: iterations over which the warm-up factor ramps from 0 to 1 (0 = always 1).
        """
        self.warmup_iters = int(warmup_iters)

    def before_step(self) -> None:
        unwrap_ddp(self.trainer.model).distill_iter = self.trainer.iter

    def after_step(self) -> None:
        model = unwrap_ddp(self.trainer.model)
        stats = {
            k: v.item() if isinstance(v, torch.Tensor) else float(v) for k, v in model.distill_stats.items()
        }
        scale = linear_warmup(self.trainer.iter, self.warmup_iters)
        self.trainer.storage.put_scalars(**stats)
        # A schedule value: logged as it is, not median-smoothed like the losses.
        self.trainer.storage.put_scalar("distill/scale", scale, smoothing_hint=False)


def build_distillation_hooks(cfg: CfgNode) -> List[HookBase]:
    """The hooks a distilling model needs (none when the config does not distill, see
    :func:`~hkd_d2.modeling.distiller.distills`): the schedule/metrics hook, plus the hooks that
    the enabled terms declare (``DistillTerm.hooks``, each built once)."""
    if not distills(cfg):
        return []
    term_hooks = []
    for term_class in enabled_term_classes(cfg):
        term_hooks.extend(h for h in term_class.hooks if h not in term_hooks)
    return [DistillationHook(cfg.MODEL.DISTILL.WARMUP_ITERS), *(hook(cfg) for hook in term_hooks)]

"""The distillation hook: the iteration for the terms' schedules, and the per-term metrics.

Before each iteration :class:`DistillationHook` gives the (unwrapped) distiller the iteration,
from which every term's :class:`~hkd_d2.modeling.distill.DistillSchedule` gives its loss
factors (warm-up over ``MODEL.DISTILL.WARMUP_ITERS``, start iteration, attenuation); after it,
it writes what the distiller's ``last_losses`` (:class:`~hkd_d2.modeling.StepLosses`) holds to the
EventStorage, hence to metrics.json and TensorBoard: the factor each distillation loss got, as
``distill/scale_<loss>``, and the terms' statistics (raw, unweighted values such as ``distill/pd``).
The trainer must register it before its writers so each iteration's values are written.
"""
from typing import List

from detectron2.config import CfgNode
from detectron2.engine import HookBase

from ..modeling.distill import enabled_term_classes, unwrap_ddp
from ..modeling.distiller import distills, training_architecture

__all__ = ["DistillationHook", "build_architecture_hooks", "build_distillation_hooks"]


class DistillationHook(HookBase):
    """Tells the distiller the iteration and records the schedule factors and the term statistics."""

    def before_step(self) -> None:
        unwrap_ddp(self.trainer.model).distill_iter = self.trainer.iter

    def after_step(self) -> None:
        losses = unwrap_ddp(self.trainer.model).last_losses
        if losses is None:
            return
        self.trainer.storage.put_scalars(**{k: float(v) for k, v in losses.stats.items()})
        # Schedule values: logged as they are, not median-smoothed like the losses.
        self.trainer.storage.put_scalars(
            **{f"distill/scale_{name}": scale for name, scale in losses.scales.items()}, smoothing_hint=False
        )


def build_architecture_hooks(cfg: CfgNode) -> List[HookBase]:
    """The hooks ``cfg``'s meta-architecture itself declares (``Distiller.training_hooks``, e.g. PCL's
    mean-teacher update), each built as ``hook(cfg)``; the trainer runs them before the checkpointer."""
    return [hook(cfg) for hook in training_architecture(cfg).training_hooks]


def build_distillation_hooks(cfg: CfgNode) -> List[HookBase]:
    """The hooks a distilling model needs (none when the config neither distills, see
    :func:`~hkd_d2.modeling.distiller.distills`, nor has architecture hooks, as PCL's online
    distillation): the schedule/metrics hook, plus the hooks that the enabled terms declare
    (``DistillTerm.hooks``, each built once)."""
    if not distills(cfg) and not training_architecture(cfg).training_hooks:
        return []
    term_hooks = []
    for term_class in enabled_term_classes(cfg):
        term_hooks.extend(h for h in term_class.hooks if h not in term_hooks)
    return [DistillationHook(), *(hook(cfg) for hook in term_hooks)]

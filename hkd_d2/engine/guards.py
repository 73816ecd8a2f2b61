"""The runaway guard: stop training when a distillation term dwarfs the detection loss.

Detectron2 stops on a NaN/inf loss only; a distillation term that is finite but huge (say
``MODEL.DISTILL.PYRAMID.WEIGHT 1e30``) would "train" a meaningless student to the end.
:class:`RunawayDistillationGuard` reads the iteration's detection and distillation losses where
the distiller keeps them (``last_losses``, :class:`~hkd_d2.modeling.StepLosses`; each process its
own) and raises :class:`RunawayDistillationError` on every process once one term has exceeded
``MODEL.DISTILL.MAX_RATIO`` times the detection loss for ``MODEL.DISTILL.MAX_RATIO_ITERS``
consecutive iterations on some process. The trainer
registers it before the checkpointer, so the iteration that stops training is never saved; a
checkpoint saved earlier in the streak (its iterations were already over the ratio) is left on
disk, but ``last_checkpoint`` is pointed back at the newest one from before the streak, so that
``--resume`` continues from the last good checkpoint.
"""
import os
from typing import Dict, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..modeling.distill import unwrap_ddp

__all__ = [
    "RunawayDistillationError",
    "RunawayDistillationGuard",
    "any_rank",
    "build_runaway_guard",
    "find_runaway",
]

class RunawayDistillationError(RuntimeError):
    """A distillation term stayed above ``MAX_RATIO`` times the detection loss; names term, value, ratio."""


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is True on any process (every process must call it at the same point)."""
    if comm.get_world_size() == 1:
        return flag
    return any(comm.all_gather(bool(flag)))


def find_runaway(detection: Dict[str, float], distillation: Dict[str, float],
                 max_ratio: float) -> Optional[Tuple[str, float, float]]:
    """The largest distillation loss above ``max_ratio`` x the summed detection loss, if any.

    Args:
        detection: ``{loss name: value}`` of the detector's own losses in one iteration.
        distillation: ``{loss name: value}`` of the (weighted) distillation losses.
        max_ratio: allowed multiple of the detection loss.

    Returns:
        ``(name, value, ratio)`` of the worst offender, or None when every term is within bounds
        (or there is no detection loss to compare with).
    """
    total = sum(detection.values())
    terms = dict(distillation)
    if total <= 0 or not terms:
        return None
    name = max(terms, key=terms.get)
    ratio = terms[name] / total
    return (name, terms[name], ratio) if ratio > max_ratio else None


class RunawayDistillationGuard(HookBase):
    """Raises :class:`RunawayDistillationError` after ``patience`` consecutive runaway iterations."""

    def __init__(self, max_ratio: float, patience: int):
        """
        Args:
            max_ratio: a term above this multiple of the detection loss is a runaway iteration.
            patience: consecutive runaway iterations that stop training (at least 1).
        """
        if max_ratio <= 0 or patience < 1:
            raise ValueError(
                f"MODEL.DISTILL.MAX_RATIO must be > 0 (got {max_ratio}) and "
                f"MODEL.DISTILL.MAX_RATIO_ITERS >= 1 (got {patience}) for the runaway guard"
            )
        self.max_ratio = float(max_ratio)
        self.patience = int(patience)
        self.streak = 0
        self.worst: Optional[Tuple[str, float, float]] = None
        # The newest checkpoint when the current streak began ("" = none): the last good one.
        self.last_good = ""

    def after_step(self) -> None:
        losses = unwrap_ddp(self.trainer.model).last_losses
        if losses is not None:
            runaway = find_runaway({k: float(v) for k, v in losses.detection.items()},
                                   {k: float(v) for k, v in losses.distillation.items()}, self.max_ratio)
            if runaway and self.streak == 0:  # before the checkpointer saves this iteration
                self.last_good = self._newest_checkpoint()
            self.streak = self.streak + 1 if runaway else 0
            self.worst = runaway or self.worst
        if not any_rank(self.streak >= self.patience):
            return
        if self.worst is None:  # another process saw it
            raise RunawayDistillationError(f"runaway distillation at iteration {self.trainer.iter}")
        name, value, ratio = self.worst
        raise RunawayDistillationError(
            f"Distillation term {name} = {value:.4g} is {ratio:.4g} x the detection loss "
            f"(> MODEL.DISTILL.MAX_RATIO {self.max_ratio:g}) for {self.streak} consecutive iterations, "
            f"up to iteration {self.trainer.iter}: training stopped, this iteration was not saved; "
            f"{self._keep_last_good()}. Lower that term's WEIGHT, or set "
            "MODEL.DISTILL.MAX_RATIO 0 to turn this guard off."
        )

    def _newest_checkpoint(self) -> str:
        """The checkpoint ``last_checkpoint`` names ("" when none, or the trainer has no checkpointer)."""
        checkpointer = getattr(self.trainer, "checkpointer", None)
        if checkpointer is None or not checkpointer.has_checkpoint():
            return ""
        return checkpointer.get_checkpoint_file()

    def _keep_last_good(self) -> str:
        """Point ``last_checkpoint`` back at the last good checkpoint when the streak saved newer
        ones; say which checkpoint ``--resume`` would continue from."""
        newest = self._newest_checkpoint()
        if newest == self.last_good:
            return f"the newest checkpoint, {newest}, is the last good one" if newest else "no checkpoint was saved"
        if not self.last_good:
            return (f"{newest} was saved after the runaway began and no checkpoint before it: "
                    "train from the start (not with --resume)")
        self.trainer.checkpointer.tag_last_checkpoint(os.path.basename(self.last_good))
        return (f"{newest} was saved after the runaway began, so last_checkpoint points again at "
                f"{self.last_good}, the last good one, for --resume")


def build_runaway_guard(cfg: CfgNode) -> Optional[RunawayDistillationGuard]:
    """The guard configured by ``MODEL.DISTILL.MAX_RATIO`` (None when it is 0: guard off)."""
    if cfg.MODEL.DISTILL.MAX_RATIO <= 0:
        return None
    return RunawayDistillationGuard(cfg.MODEL.DISTILL.MAX_RATIO, cfg.MODEL.DISTILL.MAX_RATIO_ITERS)

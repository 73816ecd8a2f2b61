"""The peer mean teacher of PCL: a temporal mean (EMA) of the whole detector, and its training hook.

The mean teacher is a ``GeneralizedRCNN`` made of copies of the live model's backbone (with FPN),
RPN and ROI heads (every peer). After every optimizer step its parameters follow the live ones,
``mean <- alpha mean + (1 - alpha) live`` with ``alpha = min(1 - 1/(s + 1), MODEL.PCL.EMA_DECAY)`` at
update s (:mod:`hkd_d2.modeling.pcl.losses`); its buffers (normalisation statistics) are copied from
the live model, as they are no trained weights. It never trains: no gradient, always in eval mode
(no dropout), outside the live model's module tree (so outside its ``state_dict``, ``parameters()``,
the optimizer and the DDP wrapper); checkpoints hold it under :data:`MEAN_TEACHER_KEY`.
"""
import copy

import torch
from torch import nn
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.modeling import GeneralizedRCNN

from ..distill.base import unwrap_ddp
from .losses import ema_update_

__all__ = ["MEAN_TEACHER_KEY", "MeanTeacherHook", "build_mean_teacher", "track_live_weights"]

# Checkpoint entry of the mean teacher's state dict (beside "model", the live detector's).
MEAN_TEACHER_KEY = "mean_teacher"


def build_mean_teacher(model: GeneralizedRCNN) -> GeneralizedRCNN:
    """A frozen ``GeneralizedRCNN`` of copies of ``model``'s backbone, RPN and ROI heads, with its
    input normalisation, in eval mode."""
    mean = GeneralizedRCNN(
        backbone=copy.deepcopy(model.backbone),
        proposal_generator=copy.deepcopy(model.proposal_generator),
        roi_heads=copy.deepcopy(model.roi_heads),
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
        input_format=model.input_format,
    )
    return mean.to(model.device).requires_grad_(False).eval()


@torch.no_grad()
def track_live_weights(mean: nn.Module, live: nn.Module, alpha: float) -> None:
    """``mean``'s parameters <- ``alpha`` mean + (1 - ``alpha``) the same-named parameters of
    ``live``; ``mean``'s buffers <- ``live``'s."""
    params, buffers = dict(live.named_parameters()), dict(live.named_buffers())
    names = [name for name, _ in mean.named_parameters()]
    ema_update_([p for _, p in mean.named_parameters()], [params[n] for n in names], alpha)
    for name, buffer in mean.named_buffers():
        buffer.copy_(buffers[name])


class MeanTeacherHook(HookBase):
    """Keeps the PCL model's mean teacher: the live weights when training starts at iteration 0 (the
    mean of no update yet), one EMA update after every step, at the trainer's iteration (so that a
    resumed training continues the same decay schedule). Runs before the checkpointer and the
    evaluation, which then see this step's mean; logs ``pcl/ema_alpha``."""

    def __init__(self, cfg: CfgNode):
        del cfg  # built as hook(cfg), like every architecture or term hook

    def before_train(self) -> None:
        if self.trainer.start_iter == 0:
            unwrap_ddp(self.trainer.model).update_mean_teacher(step=0)

    def after_step(self) -> None:
        alpha = unwrap_ddp(self.trainer.model).update_mean_teacher(step=self.trainer.iter)
        self.trainer.storage.put_scalar("pcl/ema_alpha", alpha, smoothing_hint=False)

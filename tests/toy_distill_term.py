"""A toy distillation method in one file, as a user would add one: its term, keys, teacher
needs, hook and schedule, and nothing else edited (imported by test_toy_distill_term.py)."""
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase

from hkd_d2.modeling.distill import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm


class ToyHook(HookBase):
    """Counts the iterations it saw (the hook the toy term declares)."""

    built = []

    def __init__(self, cfg: CfgNode):
        self.steps = 0
        ToyHook.built.append(self)

    def after_step(self) -> None:
        self.steps += 1


@DISTILL_TERM_REGISTRY.register()
class ToyDistill(DistillTerm):
    """Mean absolute difference of the P3 maps (``loss_toy``), on from START_ITER."""

    CONFIG_NODE = "MODEL.DISTILL.TOY"
    teacher_needs = frozenset({"features"})
    hooks = (ToyHook,)

    class Defaults:
        # Weight of the toy loss.
        WEIGHT = 0.5
        # Iteration from which it is on.
        START_ITER = 1

    def __init__(self, cfg: CfgNode, student_shapes, teacher_shapes):
        super().__init__(cfg, start_iter=cfg.MODEL.DISTILL.TOY.START_ITER)

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        loss = (ctx.student.features["p3"] - ctx.teacher.features["p3"]).abs().mean()
        ctx.stats["distill/toy"] = loss.detach()
        return {"loss_toy": loss}

"""The shared mechanism of every distillation method: a registry of *terms*.

A term is a small ``nn.Module`` built from the config. At each training step the distiller
(:class:`~hkd_d2.modeling.distiller.Distiller`) fills one :class:`DistillContext` with what the
student and, for the outputs some term asks for, the teacher exposed
(:mod:`hkd_d2.modeling.recorders`), calls every term on it and trains on
``WEIGHT x schedule factor x`` each raw loss the term returns.

A method is one module: its term class, registered in ``DISTILL_TERM_REGISTRY``, declares

* ``CONFIG_NODE``, its config node (e.g. ``"MODEL.DISTILL.PYRAMID"``), and ``Defaults``, a nested
  class whose upper-case attributes are the node's keys with their defaults, each under a one-line
  comment; :func:`hkd_d2.config.add_hkd_config` adds them for every registered term. The key ``WEIGHT`` is the term's weight (``term.weight``; a term
  of weight 0 is not built);
* ``teacher_needs``, the recorder names whose teacher outputs it reads ("features", "rpn", "roi"),
  so that the distiller runs only the teacher work some term needs (none at all when no term
  needs the teacher);
* ``hooks``, the training hooks it needs (built by the trainer when the term is on);
* its :class:`~hkd_d2.modeling.distill.schedule.DistillSchedule` (warm-up, start iteration,
  attenuation), given to :meth:`DistillTerm.__init__`;

and implements :meth:`DistillTerm.losses`, which returns its *raw* losses: the distiller applies
the weight and the schedule, and exposes detection, trained and raw losses in one place
(:class:`~hkd_d2.modeling.distiller.StepLosses`) for calibration, the runaway guard and the metrics.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Tuple, Union

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances

from ...config import config_value
from ...registries import DISTILL_TERM_REGISTRY
from ..recorders import ModelOutputs, recorder_names
from .schedule import DistillSchedule

__all__ = [
    "DISTILL_TERM_REGISTRY",
    "DistillContext",
    "DistillTerm",
    "Shapes",
    "build_distill_terms",
    "enabled_term_classes",
    "unwrap_ddp",
]

# Output shapes of a backbone by level name, as the terms receive them.
Shapes = Dict[str, ShapeSpec]


@dataclass
class DistillContext:
    """What the terms read in one training step.

    Shapes: N images, R sampled RoIs over the batch. ``student`` holds the student's "features"
    and "roi" in every step, and "rpn" (with its RPN's own training targets,
    :class:`~hkd_d2.modeling.recorders.StudentRPNOutputs`) when some term needs it; ``teacher``
    holds the outputs the terms' ``teacher_needs`` name (and its "features" whenever it runs).
    """

    images: ImageList
    gt_instances: List[Instances]
    # Sampled RoIs shared by student and teacher (proposal_boxes, gt_classes, gt_boxes, ...).
    proposals: List[Instances]
    student: ModelOutputs
    teacher: ModelOutputs
    # Unweighted per-term statistics a term wants logged (e.g. raw MSE), filled by the terms:
    # floats or detached 0-dim tensors, named like "distill/pd"; written to the EventStorage.
    stats: Dict[str, Union[float, torch.Tensor]] = field(default_factory=dict)


class DistillTerm(nn.Module):
    """Base class: subclasses declare ``CONFIG_NODE`` and ``Defaults`` (and ``teacher_needs``,
    ``hooks`` when they need any) and implement :meth:`losses`."""

    # The term's config node, e.g. "MODEL.DISTILL.PYRAMID"; a registered subclass declaring it gets
    # the keys of its nested class Defaults (WEIGHT among them) added by add_hkd_config.
    CONFIG_NODE: str
    # Upper-case attributes: the keys of CONFIG_NODE with their defaults, a one-line comment above each.
    Defaults: type
    # Full config key of the term's weight, "<CONFIG_NODE>.WEIGHT" (set from CONFIG_NODE).
    WEIGHT_KEY: str
    # Recorder names (hkd_d2.modeling.recorders) whose teacher outputs the term reads.
    teacher_needs: FrozenSet[str] = frozenset()
    # The term reads the teacher's box deltas on the student's RoIs: both box heads must encode
    # boxes alike (hkd_d2.modeling.compatibility). RPN deltas are covered by "rpn".
    reads_teacher_box_deltas: bool = False
    # Hook classes the term needs in training, each built as ``hook(cfg)``.
    hooks: Tuple[Callable[[CfgNode], Any], ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides forward(); a distillation term implements losses(ctx), which "
                "returns its raw losses (the distiller multiplies them by WEIGHT and the schedule)"
            )
        if "CONFIG_NODE" in cls.__dict__:
            keys = cls.config_defaults()
            if "WEIGHT" not in keys or not all(k.isupper() for k in keys):
                raise TypeError(f"{cls.__name__}.Defaults needs upper-case keys, WEIGHT among them; got {sorted(keys)}")
            cls.WEIGHT_KEY = f"{cls.CONFIG_NODE}.WEIGHT"

    def __init__(self, cfg: CfgNode, *, start_iter: int = 0, attenuated: Iterable[str] = ()):
        """
        Args:
            cfg: the config; the weight is read at ``WEIGHT_KEY``, the warm-up at
                ``MODEL.DISTILL.WARMUP_ITERS``.
            start_iter: iteration before which the term's losses are 0.
            attenuated: names of the term's losses that decay linearly to 0 at SOLVER.MAX_ITER.
        """
        super().__init__()
        self.weight = float(config_value(cfg, self.WEIGHT_KEY))
        self.schedule = DistillSchedule(
            warmup_iters=cfg.MODEL.DISTILL.WARMUP_ITERS,
            start_iter=start_iter,
            max_iter=cfg.SOLVER.MAX_ITER,
            attenuated=frozenset(attenuated),
        )

    @classmethod
    def config_defaults(cls) -> Dict[str, Any]:
        """The keys of ``CONFIG_NODE`` and their defaults, from ``Defaults`` in declaration order
        (``CfgNode`` copies them, so a config edited in place leaves the declared defaults as they are)."""
        return {k: v for k, v in vars(cls.Defaults).items() if not k.startswith("__")}

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        """Add ``CONFIG_NODE`` with the keys of ``Defaults`` to ``cfg`` (its parent node must exist)."""
        parent, _, name = cls.CONFIG_NODE.rpartition(".")
        setattr(config_value(cfg, parent), name, CfgNode(cls.config_defaults()))

    @property
    def detector_loss_scales(self) -> Dict[str, float]:
        """Factors for the student's own detection losses that this term replaces in part
        (e.g. Chen et al.'s ``mu`` on ``loss_cls``); empty for most terms."""
        return {}

    def forward(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        """The raw losses of :meth:`losses` (subclasses implement that, not this)."""
        return self.losses(ctx)

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        """The term's losses ``{"loss_<name>": 0-dim Tensor}`` *before* its ``WEIGHT`` and its
        schedule (factors of the method's own, such as Chen et al.'s ``1 - mu``, included)."""
        raise NotImplementedError


def enabled_term_classes(cfg: CfgNode) -> List[type]:
    """The classes of the terms in ``MODEL.DISTILL.TERMS`` whose weight is not 0."""
    classes = [DISTILL_TERM_REGISTRY.get(name) for name in cfg.MODEL.DISTILL.TERMS]
    return [c for c in classes if config_value(cfg, c.WEIGHT_KEY) != 0]


def build_distill_terms(cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes) -> nn.ModuleList:
    """Build the terms listed in ``cfg.MODEL.DISTILL.TERMS``, leaving out those of weight 0."""
    terms = nn.ModuleList()
    for term_class in enabled_term_classes(cfg):
        term = term_class(cfg, student_shapes, teacher_shapes)
        unknown = set(term.teacher_needs) - set(recorder_names())
        if unknown:
            raise ValueError(
                f"Distillation term {term_class.__name__} asks for unknown teacher outputs {sorted(unknown)} "
                f"(registered recorders: {recorder_names()})"
            )
        terms.append(term)
    return terms


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (``model`` itself when unwrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model

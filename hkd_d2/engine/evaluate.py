"""``--eval-only``: build and load only the detector that is evaluated.

A distillation config (``MODEL.META_ARCHITECTURE`` a :class:`~hkd_d2.modeling.Distiller`)
is evaluated as its student: the student detector is built from the config, no teacher is built
and no teacher file is read, and the checkpoint's distillation-only parameters (channel
adapters under ``distill_terms.``, an online teacher under ``teacher.``) are skipped.
"""
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY

from ..checkpoint import DistillCheckpointer
from ..export import student_config, student_weights
from ..modeling.distiller import DISTILL_ONLY_PREFIXES, Distiller, distill_only_prefixes
from .trainer import Trainer

__all__ = ["StudentCheckpointer", "build_test_model", "build_test_checkpointer", "is_distiller_config"]


def is_distiller_config(cfg: CfgNode) -> bool:
    """Whether ``cfg``'s meta-architecture is a distiller (trains a student under a teacher)."""
    return issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), Distiller)


def build_test_model(cfg: CfgNode) -> nn.Module:
    """The model ``--eval-only`` evaluates: the student alone for a distillation config, else the
    config's model (on ``cpu`` where a CUDA device is absent)."""
    return Trainer.build_model(student_config(cfg) if is_distiller_config(cfg) else cfg)


class StudentCheckpointer(DistillCheckpointer):
    """:class:`DistillCheckpointer` that loads what a training checkpoint of ``training_cfg``
    deploys (:func:`~hkd_d2.export.student_weights`: the student, or PCL's mean-teacher peer) and
    skips distillation-only keys of the file, so that a distillation run's checkpoint loads into its
    student detector."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, training_cfg: Optional[CfgNode] = None,
                 skipped_prefixes: Sequence[str] = DISTILL_ONLY_PREFIXES, **kwargs):
        """
        Args:
            training_cfg: the config the checkpoints were trained with (None: a plain detector's).
            skipped_prefixes: the prefixes of the keys skipped (:func:`distill_only_prefixes` of the run's config).
            Other arguments as :class:`DistillCheckpointer`.
        """
        super().__init__(model, save_dir, **kwargs)
        self.training_cfg = training_cfg
        self.skipped_prefixes = tuple(skipped_prefixes)

    def _load_model(self, checkpoint: Dict) -> object:
        model_state: Dict[str, torch.Tensor] = checkpoint["model"]
        if self.training_cfg is not None:
            model_state = student_weights(self.training_cfg, checkpoint, self._path_being_loaded)
        checkpoint["model"] = {k: v for k, v in model_state.items() if not k.startswith(self.skipped_prefixes)}
        return super()._load_model(checkpoint)


def build_test_checkpointer(cfg: CfgNode, model: nn.Module) -> StudentCheckpointer:
    """The checkpointer that loads a checkpoint of ``cfg``'s run into :func:`build_test_model`'s model."""
    return StudentCheckpointer(model, save_dir=cfg.OUTPUT_DIR, training_cfg=cfg,
                               skipped_prefixes=distill_only_prefixes(cfg))

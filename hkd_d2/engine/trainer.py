"""``Trainer``: Detectron2's DefaultTrainer wired for pedestrian data and distillation.

Differences from ``DefaultTrainer``:

* data loaders use :class:`~hkd_d2.data.PedestrianDatasetMapper` (ignore regions kept);
* the evaluator is the one the dataset's metadata names (``evaluator_type``);
* checkpoints go through :class:`~hkd_d2.checkpoint.HKDCheckpointer` (torchvision ResNet
  weights converted, mismatched weights refused with the offending keys);
* distillation hooks (schedule, per-term metrics) are added when the model distills.
"""
import weakref
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import DatasetEvaluator

from ..checkpoint import HKDCheckpointer
from ..data import PedestrianDatasetMapper
from ..evaluation import build_evaluator
from .hooks import build_distillation_hooks

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.checkpointer = HKDCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        # The periodic checkpointer built in build_hooks still holds the default checkpointer.
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.checkpointer = self.checkpointer

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=PedestrianDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=PedestrianDatasetMapper(cfg, False)
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self) -> List[hooks.HookBase]:
        ret = super().build_hooks()
        # Writers must stay last so the distillation metrics of an iteration get written.
        writer_at = next(
            (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret)
        )
        ret[writer_at:writer_at] = build_distillation_hooks(self.cfg)
        return ret

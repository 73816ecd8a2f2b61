"""``Trainer``: Detectron2's DefaultTrainer wired for pedestrian data and distillation.

Differences from ``DefaultTrainer``:

* data loaders use :class:`~hkd_d2.data.PedestrianDatasetMapper` (ignore regions kept);
* the evaluator is the one the dataset's metadata names (``evaluator_type``);
* checkpoints go through :class:`~hkd_d2.checkpoint.HKDCheckpointer` (torchvision ResNet
  weights converted, mismatched weights refused with the offending keys);
* distillation hooks (schedule, per-term metrics) are added when the model distills;
* several processes work on CPU too (Detectron2's DDP wrapper always passes CUDA device ids);
* a CUDA ``MODEL.DEVICE`` falls back to ``cpu`` (one warning) where there is no GPU, and the
  JSON data sets of ``DATASETS.PEDESTRIAN_JSON`` are registered, so a script of one's own needs
  nothing but ``Trainer(cfg)``.
"""
import logging
import os
import weakref
from typing import List, Optional

from torch import nn
from torch.nn.parallel import DistributedDataParallel
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.evaluation import DatasetEvaluator

from ..checkpoint import HKDCheckpointer
from ..data import PedestrianDatasetMapper
from ..data.register import register_config_datasets
from ..evaluation import build_evaluator
from .hooks import build_distillation_hooks
from .setup import HKD_LOGGER, resolve_device, setup_hkd_logger

__all__ = ["Trainer", "wrap_distributed"]


def wrap_distributed(model: nn.Module) -> nn.Module:
    """DDP-wrap ``model`` when several processes train; CUDA device ids only for CUDA models."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class Trainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode):
        # The steps of DefaultTrainer.__init__, with our DDP wrapper and checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        if not logging.getLogger(HKD_LOGGER).isEnabledFor(logging.INFO):
            setup_hkd_logger()
        cfg = resolve_device(cfg)
        register_config_datasets(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_distributed(model)
        step_runner = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = step_runner(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = HKDCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """Detectron2's ``build_model`` on ``cfg``, on ``cpu`` where a CUDA device is absent."""
        return super().build_model(resolve_device(cfg))

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
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self) -> List[hooks.HookBase]:
        ret = super().build_hooks()
        # Writers must stay last so the distillation metrics of an iteration get written.
        writer_at = next(
            (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret)
        )
        ret[writer_at:writer_at] = build_distillation_hooks(self.cfg)
        return ret

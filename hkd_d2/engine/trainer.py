"""``Trainer``: Detectron2's DefaultTrainer wired for pedestrian data and distillation.

Differences from ``DefaultTrainer``:

* data loaders use :class:`~hkd_d2.data.PedestrianDatasetMapper` (ignore regions kept);
* the evaluator is the one the dataset's metadata names (``evaluator_type``);
* checkpoints go through :class:`~hkd_d2.checkpoint.DistillCheckpointer` (torchvision ResNet
  weights converted, mismatched weights refused with the offending keys);
* distillation hooks (schedule, per-term metrics) are added when the model distills, with the
  runaway guard (:mod:`~hkd_d2.engine.guards`) before the checkpointer;
* one training per OUTPUT_DIR (:mod:`~hkd_d2.engine.lock`); SIGINT/SIGTERM save a checkpoint and
  exit with status 128 + N (:mod:`~hkd_d2.engine.interrupt`); checkpoints carry their config and
  a resume warns about changed keys (:mod:`~hkd_d2.engine.resume`) or a MAX_ITER already reached;
* several processes work on CPU too (Detectron2's DDP wrapper always passes CUDA device ids);
* a CUDA ``MODEL.DEVICE`` falls back to ``cpu`` (one warning) where there is no GPU, and the
  JSON data sets of ``DATASETS.PEDESTRIAN_JSON`` are registered, so a script of one's own needs
  nothing but ``Trainer(cfg)``.

``Trainer.__init__`` runs ``DefaultTrainer.__init__``'s steps through the builders DefaultTrainer
lets subclasses override (``build_model``, ``build_optimizer``, ``build_train_loader``,
``build_lr_scheduler``, ``build_hooks``) plus two of its own, :meth:`Trainer.build_checkpointer`
and :meth:`Trainer.wrap_model`: DefaultTrainer constructs its ``DetectionCheckpointer`` and calls
``create_ddp_model`` inline, and the latter passes CUDA device ids, which DistributedDataParallel
refuses for a CPU model. tests/engine/test_trainer.py fails when DefaultTrainer.__init__ gains a
step that this one lacks.
"""
import logging
import os
import weakref
from typing import List, Optional

from torch import nn
from torch.nn.parallel import DistributedDataParallel
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.evaluation import DatasetEvaluator

from ..checkpoint import CONFIG_KEY, CheckpointFileError, DistillCheckpointer, check_checkpoint_file
from ..data import PedestrianDatasetMapper
from ..data.crowdhuman import with_training_box
from ..data.curriculum import build_curriculum_loader, uses_curriculum
from ..data.register import register_config_datasets, require_registered
from ..modeling.distiller import extra_checkpointables
from ..evaluation import build_evaluator
from .calibration import LossBalanceHook
from .curriculum import build_curriculum_hooks
from .guards import build_runaway_guard
from .hooks import build_architecture_hooks, build_distillation_hooks
from .interrupt import StopOnSignal, TrainingInterrupted
from .optimizer import build_optimizer
from .lock import lock_output_dir
from .resume import config_changes, describe_config_changes
from .setup import HKD_LOGGER, resolve_device, setup_hkd_logger

__all__ = ["Trainer", "wrap_distributed"]

logger = logging.getLogger(__name__)


def wrap_distributed(model: nn.Module) -> nn.Module:
    """DDP-wrap ``model`` when several processes train; CUDA device ids only for CUDA models."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class Trainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        # hkd_d2's additions: its log in log.txt, the CPU fallback, the data sets, one run per folder.
        if not logging.getLogger(HKD_LOGGER).handlers:
            setup_hkd_logger(cfg.OUTPUT_DIR)
        cfg = resolve_device(cfg)
        register_config_datasets(cfg)
        self._output_lock = lock_output_dir(cfg.OUTPUT_DIR)
        # DefaultTrainer.__init__'s steps, in its order, through overridable builders.
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = self.wrap_model(model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def wrap_model(cls, model: nn.Module) -> nn.Module:
        """The model as trained: DDP-wrapped when several processes train (see :func:`wrap_distributed`).
        A frozen teacher is not a submodule of a distiller, so it stays out of the wrapper; an online
        teacher is one, so its gradients are averaged over the processes as the student's are."""
        return wrap_distributed(model)

    def build_checkpointer(self, cfg: CfgNode, model: nn.Module) -> DistillCheckpointer:
        """The checkpointer of the run: saves into OUTPUT_DIR with the run's config in every checkpoint."""
        return DistillCheckpointer(model, cfg.OUTPUT_DIR, run_config=cfg.dump(), trainer=weakref.proxy(self),
                                   **extra_checkpointables(model))

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """Detectron2's ``build_model`` on ``cfg``, on ``cpu`` where a CUDA device is absent."""
        return super().build_model(resolve_device(cfg))

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        """Detectron2's optimizer with the add-on's learning-rate factors (:mod:`.optimizer`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        for name in cfg.DATASETS.TRAIN:
            require_registered(name, "DATASETS.TRAIN")
        mapper = PedestrianDatasetMapper(cfg, True)
        if cfg.DATASETS.TRAIN_BOX == "full" and not uses_curriculum(cfg):
            return build_detection_train_loader(cfg, mapper=mapper)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        if cfg.DATASETS.TRAIN_BOX != "full":
            dataset = with_training_box(dataset, cfg.DATASETS.TRAIN_BOX)
        if uses_curriculum(cfg):  # ISL: the loader carries the curriculum its scoring hook drives
            return build_curriculum_loader(cfg, mapper, dataset)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        require_registered(dataset_name, "DATASETS.TEST")
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
        distillation = build_distillation_hooks(self.cfg)
        if distillation:
            distillation.append(LossBalanceHook(self.cfg))
        ret[writer_at:writer_at] = distillation
        guard = build_runaway_guard(self.cfg) if distillation else None
        # Before the checkpointer (main process) / evaluation (all): a runaway is never saved, a
        # checkpoint of a phase boundary holds that boundary's curriculum, and the architecture's
        # hooks (PCL's mean teacher) have updated what is saved and evaluated.
        at = next(i for i, h in enumerate(ret) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)))
        ret[at:at] = [*build_curriculum_hooks(self.cfg, self.data_loader), *build_architecture_hooks(self.cfg),
                      *([guard] if guard is not None else [])]
        ret.append(StopOnSignal())
        return ret

    def resume_or_load(self, resume: bool = True) -> None:
        """DefaultTrainer's (with :class:`DistillCheckpointer`'s fallback to the newest intact
        checkpoint), plus a warning listing the config keys that differ from the checkpoint's run."""
        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
            changes = config_changes(extra[CONFIG_KEY], self.cfg) if CONFIG_KEY in extra else []
            if changes:
                logger.warning(describe_config_changes(changes, self.checkpointer.resumed_from))

    def train(self):
        """DefaultTrainer's, plus: a clear message (and nothing trained) when SOLVER.MAX_ITER is
        already reached; on SIGINT/SIGTERM a checkpoint, one line and ``SystemExit(128 + N)``."""
        try:
            if self.start_iter >= self.max_iter:
                return self._already_finished()
            return super().train()
        except TrainingInterrupted as stop:
            logger.warning(str(stop))
            raise SystemExit(stop.exit_code) from None
        finally:
            self._output_lock.release()

    def _already_finished(self) -> None:
        """Say so; rewrite a missing or unreadable ``model_final.pth`` from the resumed checkpoint
        when that one is of the last iteration (the same state the final one holds)."""
        logger.warning(
            f"Nothing to train: {self.checkpointer.resumed_from} is at iteration {self.start_iter - 1} "
            f"and SOLVER.MAX_ITER is {self.max_iter}. Raise SOLVER.MAX_ITER to train further."
        )
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if self.start_iter != self.max_iter or not comm.is_main_process():
            return
        try:
            check_checkpoint_file(final)
        except (FileNotFoundError, CheckpointFileError) as e:
            logger.warning(f"{e}; rewriting it from {self.checkpointer.resumed_from} (the same iteration)")
            self.checkpointer.save("model_final", iteration=self.iter)

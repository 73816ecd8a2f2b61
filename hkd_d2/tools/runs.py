"""Train and evaluate detectors in-process with the project's Trainer (one run after another).

Used by the demo and the ablation runner; ``train_net.py`` is the command-line equivalent.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from torch import nn

from ..data.register import require_registered
from ..engine.setup import load_config, resolve_device
from ..engine.trainer import Trainer
from ..evaluation import MissRateCurve, MissRateEvaluator, miss_rate_curves
from ..evaluation.evaluator import DETECTIONS_FILE, ground_truth_from_records
from ..evaluation.miss_rate import get_protocol, load_detections
from ..modeling.distiller import distills
from ..modeling.teacher import resolve_path
from .report import write_text

__all__ = ["build_run_config", "teacher_config", "train", "evaluate", "curves_from_output"]

logger = logging.getLogger(__name__)


def build_run_config(config_file: str, opts: Sequence[str], output_dir: str) -> CfgNode:
    """Frozen config of one run: ``config_file`` + ``opts``, output in ``output_dir``."""
    cfg = resolve_device(load_config(config_file, list(opts) + ["OUTPUT_DIR", output_dir]))
    cfg.freeze()
    return cfg


def teacher_config(config_file: str) -> Optional[str]:
    """The config of the trained teacher ``config_file`` distills from: None when it trains without
    one, or with one that trains in its own run (``MODEL.TEACHER.ONLINE``)."""
    cfg = load_config(config_file)
    if not distills(cfg) or cfg.MODEL.TEACHER.ONLINE:
        return None
    return resolve_path(cfg.MODEL.TEACHER.CONFIG_FILE, f"MODEL.TEACHER.CONFIG_FILE of {config_file}")


def train(cfg: CfgNode) -> nn.Module:
    """Train ``cfg`` from scratch (or ``MODEL.WEIGHTS``) with :class:`Trainer`; return the model.

    ``OUTPUT_DIR/model_final.pth`` holds the result; the RNGs are seeded with ``cfg.SEED``.
    Nothing is evaluated during training (:func:`evaluate` does it after).
    """
    write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer.model


def evaluate(cfg: CfgNode, model: nn.Module, output_dir: str, dataset_name: Optional[str] = None) -> Dict[str, float]:
    """{setup: MR in percent} of ``model`` on ``dataset_name`` (default: the first of
    ``cfg.DATASETS.TEST``); the detections JSON goes to ``output_dir``."""
    if dataset_name is None:
        if not cfg.DATASETS.TEST:
            raise ValueError("No data set to evaluate on: DATASETS.TEST is empty")
        dataset_name = cfg.DATASETS.TEST[0]
    require_registered(dataset_name, "DATASETS.TEST")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (dataset_name,)
    evaluator = MissRateEvaluator(dataset_name, output_dir, setups=cfg.TEST.MISS_RATE.SETUPS or None, plot=False)
    was_training = model.training
    try:
        results = Trainer.test(cfg, model, evaluators=[evaluator])
    finally:
        model.train(was_training)
    return dict(results["MR"])


def curves_from_output(dataset_name: str, output_dir: str, setups: Optional[List[str]] = None) -> Dict[str, MissRateCurve]:
    """MR-FPPI curves of the detections :func:`evaluate` wrote into ``output_dir``."""
    protocol = get_protocol(MetadataCatalog.get(dataset_name).protocol)
    gt = ground_truth_from_records(DatasetCatalog.get(dataset_name), protocol, source=dataset_name)
    dt = load_detections(os.path.join(output_dir, DETECTIONS_FILE), gt, protocol)
    return miss_rate_curves(gt, dt, protocol, setups)

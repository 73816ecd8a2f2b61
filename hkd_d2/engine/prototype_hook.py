"""The hook of global-knowledge distillation (:mod:`hkd_d2.modeling.distill.gkd`).

:class:`PrototypeHook` rebuilds the prototypes of every :class:`GKDDistill` term of the model
before training and then every ``MODEL.DISTILL.GKD.PROTOTYPE_PERIOD`` iterations (0 = once per
epoch of the training set), and before every iteration sets the terms' linear attenuation
``1 - iter / SOLVER.MAX_ITER`` (when ``MODEL.DISTILL.GKD.ATTENUATE``).

A rebuild reads a fixed, seeded sample of ``PROTOTYPE_IMAGES`` training records, keeps their
non-ignored ground-truth boxes of at least ``MIN_BOX_SIZE`` px, resizes them as at test time,
runs the student's and the teacher's backbones (no gradients, student in eval mode) and pools
one vector per box and level; :func:`~hkd_d2.modeling.distill.gkd.select_prototypes` then
picks the prototypes of each class and level. With several processes every process computes
the same prototypes from the same sample.
"""
import logging
import math
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.engine import HookBase
from detectron2.structures import BoxMode
from detectron2.utils.logger import log_every_n_seconds

from ..modeling.distill.gkd import GKDDistill, Prototypes, select_prototypes

__all__ = ["PrototypeHook", "gkd_terms", "prototype_records", "build_prototypes"]

logger = logging.getLogger(__name__)


def gkd_terms(model: nn.Module) -> List[GKDDistill]:
    """The GKD terms inside ``model`` (DDP-wrapped or not)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return [m for m in model.modules() if isinstance(m, GKDDistill)]


def prototype_records(
    dataset_dicts: List[Dict], min_box_size: float, max_images: int, seed: int = 0
) -> List[Dict]:
    """Records (copies) with only their non-ignored boxes of width and height >= ``min_box_size``;
    records left without boxes are dropped, then at most ``max_images`` are drawn (0 = all)."""
    kept = []
    for record in dataset_dicts:
        annotations = []
        for ann in record.get("annotations", []):
            box = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYWH_ABS)
            if not ann.get("ignore", 0) and box[2] >= min_box_size and box[3] >= min_box_size:
                annotations.append(ann)
        if annotations:
            kept.append({**record, "annotations": annotations})
    if max_images and len(kept) > max_images:
        order = np.random.RandomState(seed).permutation(len(kept))[:max_images]
        kept = [kept[i] for i in sorted(order)]
    return kept


@torch.no_grad()
def build_prototypes(
    model: nn.Module, term: GKDDistill, records: List[Dict], mapper: DatasetMapper, cfg: CfgNode
) -> Prototypes:
    """Prototypes ``(class, level) -> (P_s, P_t)`` from dataset records, mapped batch by batch.

    ``model`` is the (unwrapped) distiller: its ``preprocess_image``/``backbone`` give the
    student's maps, ``model.teacher.features`` the teacher's.
    """
    c = cfg.MODEL.DISTILL.GKD
    per_key: Dict[Tuple[int, str], Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}
    batch_size = max(1, cfg.SOLVER.IMS_PER_BATCH)
    for start in range(0, len(records), batch_size):
        log_every_n_seconds(logging.INFO, f"GKD prototypes: {start}/{len(records)} images read", n=10)
        batch = [mapper(r) for r in records[start : start + batch_size]]
        student = model.backbone(model.preprocess_image(batch).tensor)
        _, teacher = model.teacher.features(batch)
        boxes = [x["instances"].gt_boxes.to(model.device) for x in batch]
        classes = torch.cat([x["instances"].gt_classes for x in batch]).tolist()
        vec_s, vec_t = term.instance_vectors(student, boxes), term.instance_vectors(teacher, boxes)
        for level in term.in_features:
            for i, cls in enumerate(classes):
                lists = per_key.setdefault((cls, level), ([], []))
                lists[0].append(vec_s[level][i])
                lists[1].append(vec_t[level][i])
    return {
        key: select_prototypes(
            torch.stack(s), torch.stack(t), c.NUM_PROTOTYPES, c.ALPHA, c.DENSITY_BANDWIDTH, c.DENSITY_QUANTILE
        )
        for key, (s, t) in per_key.items()
    }


class PrototypeHook(HookBase):
    """Rebuilds GKD prototypes periodically and sets the GKD attenuation (see module docstring)."""

    def __init__(self, cfg: CfgNode):
        c = cfg.MODEL.DISTILL.GKD
        self.cfg = cfg.clone()
        self.attenuate = c.ATTENUATE
        self.max_iter = cfg.SOLVER.MAX_ITER
        train_records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        self.records = prototype_records(
            train_records, c.MIN_BOX_SIZE, c.PROTOTYPE_IMAGES, seed=max(cfg.SEED, 0)
        )
        self.period = c.PROTOTYPE_PERIOD or max(1, math.ceil(len(train_records) / cfg.SOLVER.IMS_PER_BATCH))
        self.terms: List[GKDDistill] = []
        # Test-time resizing, but annotations kept (is_train=True keeps them in DatasetMapper).
        self.mapper = DatasetMapper(
            is_train=True,
            augmentations=utils.build_augmentation(cfg, is_train=False),
            image_format=cfg.INPUT.FORMAT,
        )

    def before_train(self) -> None:
        self.terms = gkd_terms(self.trainer.model)
        self._rebuild()

    def before_step(self) -> None:
        factor = max(0.0, 1.0 - self.trainer.iter / self.max_iter) if self.attenuate else 1.0
        for term in self.terms:
            term.set_attenuation(factor)

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 and next_iter < self.max_iter:
            self._rebuild()

    def _rebuild(self) -> None:
        if not self.terms:
            return
        model = self.trainer.model
        model = model.module if isinstance(model, DistributedDataParallel) else model
        was_training = model.training
        model.train(False)
        try:
            logger.info(f"Building GKD prototypes from {len(self.records)} training images ...")
            for term in self.terms:
                prototypes = build_prototypes(model, term, self.records, self.mapper, self.cfg)
                term.set_prototypes(prototypes)
                logger.info(
                    "GKD prototypes: "
                    + ", ".join(f"class {c} {lvl}: {len(p[0])}" for (c, lvl), p in sorted(prototypes.items()))
                )
        finally:
            model.train(was_training)

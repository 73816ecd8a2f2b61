"""GKD's prototype generation (Tang et al. 2022, "Distilling Object Detectors with Global
Knowledge"), the first module of :mod:`hkd_d2.modeling.distill.gkd`.

For each class and FPN level, every ground-truth instance of at least ``MIN_BOX_SIZE`` px (width
and height) gives a teacher and a student vector on the one level the canonical-size rule gives
its box (the mean of the map inside the box, ``GKDDistill.assigned_vectors``). Vectors are
L2-normalised; a density filter keeps instances whose Gaussian-kernel density
``sum_j exp(-((1 - cos_ij) / h)^2)`` is at least the ``DENSITY_QUANTILE`` quantile in BOTH
spaces (:func:`density_candidates`); joint matching pursuit (:func:`joint_matching_pursuit`)
then picks ``NUM_PROTOTYPES`` instances whose teacher and student vectors jointly explain all
instances, with coefficients of the two spaces tied by ``ALPHA``.

:class:`PrototypeHook` rebuilds the prototypes of every term that lists it in ``hooks`` before
training and then every ``MODEL.DISTILL.GKD.PROTOTYPE_PERIOD`` iterations (0 = once per epoch of
the training set). A rebuild reads a fixed, seeded sample of ``PROTOTYPE_IMAGES`` training
records, keeps their non-ignored ground-truth boxes of at least ``MIN_BOX_SIZE`` px, resizes them
as at test time, runs the student's and the teacher's backbones (no gradients, student in eval
mode) and pools one vector per box. With several processes every process computes the same
prototypes from the same sample.
"""
import logging
import math
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.engine import HookBase
from detectron2.structures import BoxMode
from detectron2.utils.logger import log_every_n_seconds

from .base import unwrap_ddp

__all__ = [
    "Prototypes",
    "PrototypeHook",
    "density_candidates",
    "joint_matching_pursuit",
    "select_prototypes",
    "prototype_records",
    "build_prototypes",
]

logger = logging.getLogger(__name__)

# (class id, level name) -> (student prototypes (K, C_s), teacher prototypes (K, C_t)).
Prototypes = Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]]


def density_candidates(
    student: torch.Tensor, teacher: torch.Tensor, bandwidth: float = 0.1, quantile: float = 0.4
) -> torch.Tensor:
    """Indices of instances dense enough in both spaces.

    Args:
        student, teacher: (M, C_s), (M, C_t) L2-normalised instance vectors.
    Returns:
        LongTensor of indices whose density is >= the ``quantile`` of densities in both spaces
        (never empty for M >= 1).
    """
    keep = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
    for x in (student, teacher):
        density = torch.exp(-((1.0 - x @ x.T) / bandwidth).pow(2)).sum(dim=1)
        bound = density.sort().values[int(quantile * (len(density) - 1))]
        keep &= density >= bound
    return keep.nonzero().squeeze(1)


def joint_matching_pursuit(
    student: torch.Tensor,
    teacher: torch.Tensor,
    candidates: torch.Tensor,
    num: int,
    alpha: float = 10.0,
) -> torch.Tensor:
    """Greedy joint matching pursuit over the two spaces.

    At each step the candidate atom ``k`` (unit vectors ``a_k``, ``b_k``) minimising
    ``sum_n ||ra_n - wa_n a_k||^2 + ||rb_n - wb_n b_k||^2 + alpha (wa_n - wb_n)^2`` (optimal
    ``wa, wb`` in closed form) is chosen and removed from the residuals ``ra, rb``.

    Args:
        student, teacher: (M, C_s), (M, C_t) L2-normalised instance vectors.
        candidates: LongTensor of candidate indices.
        num: atoms to select (at most ``len(candidates)``).
    Returns:
        LongTensor (min(num, len(candidates)),) of selected instance indices, in order.
    """
    atoms_s, atoms_t = student[candidates], teacher[candidates]
    res_s, res_t = student.clone(), teacher.clone()
    taken = torch.zeros(len(candidates), dtype=torch.bool, device=student.device)
    chosen = []
    for _ in range(min(num, len(candidates))):
        inner_s, inner_t = res_s @ atoms_s.T, res_t @ atoms_t.T  # (M, K)
        shared = alpha * (inner_s + inner_t)
        w_s = (inner_s + shared) / (1 + 2 * alpha)
        w_t = (inner_t + shared) / (1 + 2 * alpha)
        # Residual energy after removing each atom, up to a constant (||a_k|| = ||b_k|| = 1).
        err = (w_s.pow(2) - 2 * w_s * inner_s + w_t.pow(2) - 2 * w_t * inner_t
               + alpha * (w_s - w_t).pow(2)).sum(dim=0)
        err[taken] = float("inf")
        k = int(err.argmin())
        taken[k] = True
        chosen.append(int(candidates[k]))
        res_s = res_s - w_s[:, k : k + 1] * atoms_s[k]
        res_t = res_t - w_t[:, k : k + 1] * atoms_t[k]
    return torch.tensor(chosen, dtype=torch.long, device=student.device)


def select_prototypes(
    student: torch.Tensor,
    teacher: torch.Tensor,
    num: int = 10,
    alpha: float = 10.0,
    bandwidth: float = 0.1,
    quantile: float = 0.4,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prototypes of one class and level from its instance vectors (M, C_s) and (M, C_t).

    Returns the selected rows of the (unnormalised) inputs, (K, C_s) and (K, C_t).
    """
    norm_s, norm_t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    candidates = density_candidates(norm_s, norm_t, bandwidth, quantile)
    chosen = joint_matching_pursuit(norm_s, norm_t, candidates, num, alpha)
    return student[chosen], teacher[chosen]


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
def build_prototypes(model: nn.Module, term: nn.Module, records: List[Dict], mapper: DatasetMapper, cfg: CfgNode) -> Prototypes:
    """Prototypes ``(class, level) -> (P_s, P_t)`` from dataset records, mapped batch by batch.

    ``model`` is the (unwrapped) distiller: its ``preprocess_image``/``backbone`` give the
    student's maps, ``model.teacher.features`` the teacher's; ``term.assigned_vectors`` pools
    each box on its level.
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
        classes = torch.cat([x["instances"].gt_classes for x in batch]).to(model.device)
        vec_s, vec_t = term.assigned_vectors(student, boxes), term.assigned_vectors(teacher, boxes)
        for level, (idx, s) in vec_s.items():
            t = vec_t[level][1]
            for i, cls in enumerate(classes[idx].tolist()):
                lists = per_key.setdefault((cls, level), ([], []))
                lists[0].append(s[i])
                lists[1].append(t[i])
    return {
        key: select_prototypes(
            torch.stack(s), torch.stack(t), c.NUM_PROTOTYPES, c.ALPHA, c.DENSITY_BANDWIDTH, c.DENSITY_QUANTILE
        )
        for key, (s, t) in per_key.items()
    }


class PrototypeHook(HookBase):
    """Rebuilds the prototypes of the terms that need this hook (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        c = cfg.MODEL.DISTILL.GKD
        self.cfg = cfg.clone()
        self.max_iter = cfg.SOLVER.MAX_ITER
        train_records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        self.records = prototype_records(
            train_records, c.MIN_BOX_SIZE, c.PROTOTYPE_IMAGES, seed=max(cfg.SEED, 0)
        )
        self.period = c.PROTOTYPE_PERIOD or max(1, math.ceil(len(train_records) / cfg.SOLVER.IMS_PER_BATCH))
        self.terms: List[nn.Module] = []
        # Test-time resizing, but annotations kept (is_train=True keeps them in DatasetMapper).
        self.mapper = DatasetMapper(
            is_train=True,
            augmentations=utils.build_augmentation(cfg, is_train=False),
            image_format=cfg.INPUT.FORMAT,
        )

    def before_train(self) -> None:
        model = unwrap_ddp(self.trainer.model)
        self.terms = [t for t in model.distill_terms if PrototypeHook in type(t).hooks]
        self._rebuild()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 and next_iter < self.max_iter:
            self._rebuild()

    def _rebuild(self) -> None:
        if not self.terms:
            return
        model = unwrap_ddp(self.trainer.model)
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

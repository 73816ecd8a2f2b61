"""BKD: Zhang, Chen, Hu, Peng 2021, "Balanced Knowledge Distillation for Long-tailed Learning"
(arXiv 2104.10510).

The detector keeps its own (instance-balanced) cross-entropy ``loss_cls``; this term adds the
class-balanced distillation on the box head's class logits of the shared sampled RoIs:

    loss_bkd = T^2 * mean over RoIs of KL(p_t~ || softmax(z_s / T))   (the distiller applies WEIGHT),
    p_t~ = w * softmax(z_t / T) / sum_c (w_c softmax(z_t / T)_c),

with the class-balanced ("effective number") weights ``w_c = (1 - beta) / (1 - beta^n_c)``
normalised to sum to the number of weighted classes (:func:`class_balanced_weights`). ``WEIGHT`` is
the paper's alpha.

Class counts ``n_c`` (``COUNT``):

* ``"annotations"``: the non-ignore annotations of each class in ``DATASETS.TRAIN``, counted
  before training by :class:`BKDHook`; the K foreground classes are weighted among themselves
  and the background column (the last, K, of Detectron2's scores), which has no annotations,
  weighs 1. With one class every weight is 1 and the term is plain KD at temperature T.
* ``"sampled_rois"``: the classes of the RoIs the box head sampled so far in this training
  (background included), accumulated every step over all processes; all K+1 columns are
  weighted, normalised to sum to K+1.

Until counts exist (outside a trainer, before the first step) and before ``DEFER_ITER`` (deferred
re-weighting, the reference's DRW) every weight is 1.

Reference: the authors' code (EricZsy/BalancedKnowledgeDistillation: ``losses.py`` ``BKDLoss``, the
weights of ``train_student.py``). Matches: the weights (beta 0.9999, normalised to the number of
classes), the re-weighted and renormalised teacher distribution, the KL summed over classes and
averaged over samples, times T^2 (T 2), alpha 1, the unweighted hard CE, deferred re-weighting as
weights 1 before a switch point. Differs on purpose: samples are sampled RoIs rather than images
(a detector's "class" includes background); counts of zero are read as 1 (the formula is
undefined at 0); the switch point is an iteration rather than an epoch.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.layers import cat
from detectron2.utils import comm

from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes, unwrap_ddp

__all__ = ["BKDDistill", "BKDHook", "class_balanced_weights", "balanced_kl", "annotation_counts"]

# MODEL.DISTILL.BKD.COUNT values.
COUNT_SOURCES = ("annotations", "sampled_rois")


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """``(1 - beta) / (1 - beta^n_c)`` for (C,) counts ``n_c`` (0 read as 1), scaled to sum to C."""
    effective = 1.0 - torch.pow(beta, counts.double().clamp(min=1.0))
    weights = (1.0 - beta) / effective
    return (weights / weights.sum() * len(counts)).to(torch.float32)


def balanced_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * mean_r KL(p_t~ || softmax(z_s/T))`` over the R rows of (R, C) logits, the teacher's
    softmax re-weighted by ``weights`` (C,) and renormalised; 0 (in the graph) when R == 0."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    p_t = F.softmax(teacher_logits / temperature, dim=1) * weights
    p_t = p_t / p_t.sum(dim=1, keepdim=True)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), p_t, reduction="none").sum(dim=1)
    return kl.mean() * temperature ** 2


def annotation_counts(dataset_dicts: List[Dict], num_classes: int, source: str) -> torch.Tensor:
    """(num_classes,) number of non-ignore annotations per ``category_id`` in dataset records; a
    category outside [0, num_classes) is a ValueError naming ``source``."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for record in dataset_dicts:
        for ann in record.get("annotations", ()):
            if ann.get("ignore", ann.get("iscrowd", 0)):
                continue
            c = int(ann.get("category_id", 0))
            if not 0 <= c < num_classes:
                raise ValueError(
                    f"{source}: annotation of category_id {c} in {record.get('file_name')}, but "
                    f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}"
                )
            counts[c] += 1
    return counts


class BKDHook(HookBase):
    """Counts the training set's annotations per class before training (``COUNT "annotations"``)
    and switches the re-weighting on at ``DEFER_ITER``, for every term listing this hook."""

    def __init__(self, cfg: CfgNode):
        c = cfg.MODEL.DISTILL.BKD
        self.datasets = list(cfg.DATASETS.TRAIN)
        self.count = c.COUNT
        self.defer_iter = c.DEFER_ITER
        self.terms: List["BKDDistill"] = []

    def before_train(self) -> None:
        model = unwrap_ddp(self.trainer.model)
        self.terms = [t for t in model.distill_terms if BKDHook in type(t).hooks]
        if self.count == "annotations" and self.terms:
            records = get_detection_dataset_dicts(self.datasets, filter_empty=False)
            for term in self.terms:
                term.set_class_counts(annotation_counts(records, term.num_classes, f"DATASETS.TRAIN {self.datasets}"))

    def before_step(self) -> None:
        for term in self.terms:
            term.reweighting = self.trainer.iter >= self.defer_iter


@DISTILL_TERM_REGISTRY.register()
class BKDDistill(DistillTerm):
    """Class-balanced KL between teacher and student box-head class scores on the shared RoIs.

    Loss: ``loss_bkd`` (raw: the distiller applies WEIGHT, the paper's alpha); stats
    ``distill/bkd_kl``, ``distill/bkd_weight_<c>`` (the weight of each column, background last).
    """

    CONFIG_NODE = "MODEL.DISTILL.BKD"
    teacher_needs = frozenset({"roi"})
    hooks = (BKDHook,)

    class Defaults:
        # alpha: weight of the balanced KL (reference: 1); the detector's own CE stays as it is.
        WEIGHT = 1.0
        # T: softmax temperature of teacher and student class scores (the KL is scaled by T^2).
        TEMPERATURE = 2.0
        # beta of the effective number of samples, w_c = (1 - beta) / (1 - beta^n_c).
        BETA = 0.9999
        # Class counts n_c: "annotations" (training set, foreground classes) or "sampled_rois" (background too).
        COUNT = "annotations"
        # Deferred re-weighting: every weight is 1 before this iteration (0 = re-weighted from the start).
        DEFER_ITER = 0

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        c = cfg.MODEL.DISTILL.BKD
        if c.COUNT not in COUNT_SOURCES:
            raise ValueError(f"MODEL.DISTILL.BKD.COUNT '{c.COUNT}' is not one of {COUNT_SOURCES}")
        self.temperature = c.TEMPERATURE
        self.beta = c.BETA
        self.count_sampled_rois = c.COUNT == "sampled_rois"
        self.num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # Per column of the scores (K foreground classes, background last); checkpointed.
        self.register_buffer("class_counts", torch.zeros(self.num_classes + 1, dtype=torch.float64))
        # Set every iteration by BKDHook (DEFER_ITER); outside a trainer, re-weighted unless deferred.
        self.reweighting = c.DEFER_ITER == 0

    def set_class_counts(self, counts: torch.Tensor) -> None:
        """Foreground counts (K,) (annotations) or all columns (K+1,)."""
        self.class_counts.zero_()
        self.class_counts[: len(counts)] = counts.to(self.class_counts)

    def class_weights(self) -> torch.Tensor:
        """(K+1,) weight of each score column (background last)."""
        ones = torch.ones(self.num_classes + 1, device=self.class_counts.device)
        if not self.reweighting or self.class_counts.sum() == 0:
            return ones
        if self.count_sampled_rois:
            return class_balanced_weights(self.class_counts, self.beta)
        ones[: self.num_classes] = class_balanced_weights(self.class_counts[: self.num_classes], self.beta)
        return ones

    def _count_sampled_rois(self, ctx: DistillContext) -> None:
        classes = cat([p.gt_classes for p in ctx.proposals])
        batch = torch.bincount(classes, minlength=self.num_classes + 1).to(self.class_counts)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(batch)
        self.class_counts += batch

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        if self.count_sampled_rois:
            self._count_sampled_rois(ctx)
        scores_s, scores_t = ctx.student.roi.scores, ctx.teacher.roi.scores
        weights = self.class_weights().to(scores_s)
        kl = balanced_kl(scores_s, scores_t, weights, self.temperature)
        ctx.stats["distill/bkd_kl"] = kl.detach()
        ctx.stats.update({f"distill/bkd_weight_{c}": float(w) for c, w in enumerate(weights.tolist())})
        return {"loss_bkd": kl}

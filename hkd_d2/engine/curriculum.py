"""The scoring half of instance-level sequence learning (ISL; the sampler is
:mod:`hkd_d2.data.curriculum`).

At every phase boundary (``DATALOADER.CURRICULUM.PHASE_ITERS``, before SOLVER.MAX_ITER)
:class:`CurriculumHook` scores every training image with the student as it is at that iteration
(a snapshot: no gradients, normalisation statistics frozen, its own random state) and hands the
sampler the images easiest first. Scores (``SCORE``, :data:`SCORERS`), lower = easier:

* ``"detection_loss"``: the student's summed detection losses on the image alone (RPN and box
  head, ignore regions as in training; no distillation);
* ``"teacher_distance"``: the mean over the FPN levels both backbones output of the mean squared
  difference between the student's and the teacher's maps (the teacher of the distiller, or one
  built from ``MODEL.TEACHER`` when no term needs it).

Images are resized as at test time and keep their training boxes. With several processes each
scores its shard (``rank::world``) and the scores are gathered, so every process ranks alike. The
ranking and its boundary are the hook's ``state_dict``, saved with every checkpoint: a resumed
training continues with the same ranking.

Our design, from the paper's abstract (its details were not available): the snapshot, the two
scores, the linear pacing from ``START_FRACTION`` and the rescoring at fixed iterations.
"""
import contextlib
import logging
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.engine import HookBase
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import log_every_n_seconds

from ..data import PedestrianDatasetMapper
from ..data.curriculum import Curriculum, easiest_first, phase_iters, uses_curriculum
from ..modeling.distill import unwrap_ddp
from ..modeling.teacher import Teacher, build_teacher

__all__ = ["CurriculumHook", "SCORERS", "build_curriculum_hooks", "score_images", "frozen_snapshot"]

logger = logging.getLogger(__name__)


def detection_loss(student: GeneralizedRCNN, teacher: Optional[Teacher], batch: List[Dict]) -> float:
    """The student's summed detection losses on ``batch`` (Detectron2's training forward)."""
    return float(sum(GeneralizedRCNN.forward(student, batch).values()))


def teacher_distance(student: GeneralizedRCNN, teacher: Teacher, batch: List[Dict]) -> float:
    """Mean over the levels both backbones output of ``mean((P_s - P_t)^2)``."""
    features = student.backbone(student.preprocess_image(batch).tensor)
    _, teacher_features = teacher.features(batch)
    levels = [f for f in features if f in teacher_features]
    for f in levels:
        if features[f].shape != teacher_features[f].shape:
            raise ValueError(
                f"DATALOADER.CURRICULUM.SCORE 'teacher_distance': level {f} is {tuple(features[f].shape)} "
                f"in the student, {tuple(teacher_features[f].shape)} in the teacher (same FPN channels "
                "and size divisibility needed)"
            )
    if not levels:
        raise ValueError("DATALOADER.CURRICULUM.SCORE 'teacher_distance': no FPN level common to student and teacher")
    return float(torch.stack([(features[f] - teacher_features[f]).pow(2).mean() for f in levels]).mean())


# DATALOADER.CURRICULUM.SCORE -> fn(student, teacher or None, one-image batch) -> score (lower = easier);
# the set of those needing the teacher.
SCORERS: Dict[str, Callable[[GeneralizedRCNN, Optional[Teacher], List[Dict]], float]] = {
    "detection_loss": detection_loss,
    "teacher_distance": teacher_distance,
}
NEEDS_TEACHER = frozenset({"teacher_distance"})


@contextlib.contextmanager
def frozen_snapshot(model: nn.Module, seed: int) -> Iterator[nn.Module]:
    """``model`` in training mode with its BatchNorm layers in eval mode, under ``no_grad``, with
    its own seeded random state and a throwaway EventStorage: scoring changes nothing of the
    training (weights, statistics, random streams, logged metrics). Modes are restored after."""
    modes = {m: m.training for m in model.modules()}
    devices = [model.device] if getattr(model, "device", torch.device("cpu")).type == "cuda" else []
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices), EventStorage():
            torch.manual_seed(seed)
            yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def score_images(
    student: GeneralizedRCNN,
    teacher: Optional[Teacher],
    records: List[Dict],
    mapper: Callable[[Dict], Dict],
    scorer: Callable,
    seed: int = 0,
) -> torch.Tensor:
    """(M,) float64 score of every record, each process scoring its shard ``rank::world``, all
    gathered (every process returns the same tensor)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    mine = range(rank, len(records), world)
    local = []
    with frozen_snapshot(student, seed):
        for n, i in enumerate(mine):
            log_every_n_seconds(logging.INFO, f"Curriculum: scored {n}/{len(mine)} images", n=10)
            local.append((i, scorer(student, teacher, [mapper(records[i])])))
    scores = torch.full((len(records),), float("nan"), dtype=torch.float64)
    for part in comm.all_gather(local):
        for i, value in part:
            scores[i] = value
    return scores


class CurriculumHook(HookBase):
    """Ranks the training images at every phase boundary and gives the ranking to the sampler."""

    def __init__(self, cfg: CfgNode, curriculum: Curriculum):
        c = cfg.DATALOADER.CURRICULUM
        if c.SCORE not in SCORERS:
            raise ValueError(f"DATALOADER.CURRICULUM.SCORE '{c.SCORE}' is not one of {sorted(SCORERS)}")
        self.cfg = cfg.clone()
        self.curriculum = curriculum
        self.scorer = SCORERS[c.SCORE]
        self.needs_teacher = c.SCORE in NEEDS_TEACHER
        self.period = phase_iters(cfg, len(curriculum.records))
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.seed = max(cfg.SEED, 0)
        self.scores: Optional[torch.Tensor] = None
        # The training mapper (boxes, ignore regions, classes) with test-time resizing.
        mapper_args = PedestrianDatasetMapper.from_config(cfg, is_train=True)
        mapper_args["augmentations"] = utils.build_augmentation(cfg, is_train=False)
        self.mapper = PedestrianDatasetMapper(**mapper_args)
        self._teacher: Optional[Teacher] = None

    def before_train(self) -> None:
        self.curriculum.sampler.set_start_iter(self.trainer.start_iter)

    def after_step(self) -> None:
        boundary = self.trainer.iter + 1
        if boundary % self.period == 0 and boundary < self.max_iter:
            self.rank_images(boundary)

    def rank_images(self, boundary: int) -> None:
        """Score every training image with the student as it is now; its ranking from ``boundary`` on."""
        student = unwrap_ddp(self.trainer.model)
        logger.info("Curriculum: ranking %d training images at iteration %d", len(self.curriculum.records), boundary)
        self.scores = score_images(
            student, self.teacher(student), self.curriculum.records, self.mapper, self.scorer, self.seed + boundary
        )
        self.curriculum.sampler.set_order(easiest_first(self.scores), boundary)

    def teacher(self, student: nn.Module) -> Optional[Teacher]:
        """The teacher the score reads (None when it reads none)."""
        if not self.needs_teacher:
            return None
        if getattr(student, "teacher", None) is not None:
            return student.teacher
        if self._teacher is None:
            self._teacher = build_teacher(self.cfg)
        return self._teacher

    def state_dict(self) -> Dict:
        """The ranking in use and its boundary (empty before the first boundary)."""
        sampler = self.curriculum.sampler
        if sampler.boundary < 0:
            return {}
        return {"order": sampler.order, "boundary": sampler.boundary, "scores": self.scores}

    def load_state_dict(self, state: Dict) -> None:
        self.curriculum.sampler.set_order(state["order"], state["boundary"])
        self.scores = state.get("scores")


def build_curriculum_hooks(cfg: CfgNode, data_loader) -> List[HookBase]:
    """``[CurriculumHook]`` when ``cfg`` uses the curriculum sampler (the loader must be one of
    :func:`~hkd_d2.data.curriculum.build_curriculum_loader`), else ``[]``."""
    if not uses_curriculum(cfg):
        return []
    curriculum = getattr(data_loader, "curriculum", None)
    if curriculum is None:
        raise ValueError(
            "DATALOADER.SAMPLER_TRAIN 'CurriculumSampler' needs the training loader of hkd_d2's Trainer "
            "(hkd_d2.data.curriculum.build_curriculum_loader)"
        )
    return [CurriculumHook(cfg, curriculum)]

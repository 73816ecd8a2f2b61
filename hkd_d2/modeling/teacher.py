"""The teacher: a detector built from its own config, frozen (:class:`FrozenTeacher`) or trained
with the student in the same run (:class:`OnlineTeacher`, ``MODEL.TEACHER.ONLINE``).

The teacher is a complete Detectron2 detector (normally a ``GeneralizedRCNN`` R50-FPN with
:class:`~hkd_d2.modeling.roi_heads.PedestrianROIHeads`) described by
``MODEL.TEACHER.CONFIG_FILE``. A frozen teacher is loaded from ``MODEL.TEACHER.WEIGHTS`` (whole);
an online one starts from them when they are given (a backbone-only ImageNet file is enough) and
from its config's initialisation otherwise. It keeps its own pixel mean/std, anchors and heads;
only ``MODEL.DEVICE`` is taken from the student.

Relative paths in ``MODEL.TEACHER.CONFIG_FILE`` / ``MODEL.TEACHER.WEIGHTS`` are looked up
next to the config file that names them (as Detectron2 does for ``_BASE_``; see
:func:`anchor_teacher_paths`, which :func:`hkd_d2.engine.load_config` applies), then in the
current directory, so the shipped configs find their teacher config from a checkout and from an
installed package alike.
"""
import logging
import os
from pathlib import Path
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import yaml

import torch
from torch import nn
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from ..checkpoint import DistillCheckpointer, load_detector_weights
from ..config import add_hkd_config

__all__ = [
    "FrozenTeacher",
    "OnlineTeacher",
    "Teacher",
    "TeacherStep",
    "anchor_teacher_paths",
    "build_online_teacher",
    "build_teacher",
    "load_teacher_config",
    "resolve_path",
]

logger = logging.getLogger(__name__)

# Keys of MODEL.TEACHER that hold file paths.
TEACHER_PATH_KEYS = ("CONFIG_FILE", "WEIGHTS")
BASE_KEY = "_BASE_"
# Prefix of an online teacher's losses in the loss dict and of its EventStorage scalars.
TEACHER_SCOPE = "teacher"


def resolve_path(path: str, what: str) -> str:
    """Return ``path`` as an existing local file, relative paths taken from the current directory.

    URLs (``scheme://...``) are returned unchanged for Detectron2's PathManager. Raises
    ``FileNotFoundError`` naming ``what`` and the place looked at.
    """
    if not path:
        raise FileNotFoundError(f"{what} is empty; set it to a file")
    if "://" in path:
        return path
    candidate = Path(path)
    if candidate.is_file():
        return str(candidate.resolve())
    raise FileNotFoundError(
        f"{what} '{path}' not found (looked at: {candidate.resolve()}; a relative path is looked up "
        "next to the config file that names it when the config is loaded with hkd_d2.engine.load_config "
        "or hkd_d2.model_zoo.get_config, then in the current directory)"
    )


def _naming_file(config_file: str, key: str) -> Optional[str]:
    """The file of ``config_file``'s ``_BASE_`` chain whose value of ``MODEL.TEACHER.<key>``
    wins the merge (the most derived one setting it), or None when no file sets it."""
    with open(config_file) as f:
        data = yaml.safe_load(f) or {}
    if key in ((data.get("MODEL") or {}).get("TEACHER") or {}):
        return config_file
    base = data.get(BASE_KEY)
    if not base or "://" in base:
        return None
    base = os.path.expanduser(base)
    return _naming_file(base if os.path.isabs(base) else os.path.join(os.path.dirname(config_file), base), key)


def anchor_teacher_paths(cfg: CfgNode, config_file: str) -> CfgNode:
    """Make the relative ``MODEL.TEACHER`` paths that ``config_file`` (or its ``_BASE_`` chain)
    sets absolute when they exist next to the file that sets them; others stay as they are
    (looked up in the current directory when the teacher is built). Call it after
    ``cfg.merge_from_file(config_file)`` and before command-line overrides. Returns ``cfg``."""
    for key in TEACHER_PATH_KEYS:
        value = cfg.MODEL.TEACHER[key]
        if not value or "://" in value or os.path.isabs(value):
            continue
        naming = _naming_file(config_file, key)
        if naming is None:
            continue
        candidate = (Path(naming).parent / value).resolve()
        if candidate.is_file():
            cfg.MODEL.TEACHER[key] = str(candidate)
    return cfg


def load_teacher_config(cfg: CfgNode) -> CfgNode:
    """The teacher's own config from ``cfg.MODEL.TEACHER.CONFIG_FILE``, on the student's device."""
    config_file = resolve_path(cfg.MODEL.TEACHER.CONFIG_FILE, "MODEL.TEACHER.CONFIG_FILE")
    teacher_cfg = add_hkd_config(get_cfg())
    teacher_cfg.merge_from_file(config_file)
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = ""
    teacher_cfg.freeze()
    return teacher_cfg


class TeacherStep(NamedTuple):
    """What the teacher computed on one training step's inputs."""

    # The padded images the teacher's backbone ran on, normalised with its pixel mean/std: (N, 3, H, W).
    images: torch.Tensor
    # Its backbone maps, out of the autograd graph, e.g. ``p2``: (N, C, H/4, W/4).
    features: Dict[str, torch.Tensor]
    # Its own detection losses, ``"teacher/loss_cls"``, ... (with gradients); empty for a frozen teacher.
    losses: Dict[str, torch.Tensor]


class Teacher(nn.Module):
    """A teacher detector and the pieces distillation reads from it.

    Every read (:meth:`features`, :meth:`rpn_head`, :meth:`pool_and_predict`) runs under
    ``torch.no_grad()``, so no distillation loss ever sends a gradient into the teacher.
    Shapes: N images, R RoIs, C channels.
    """

    # Whether the teacher trains in the student's run: then it is a submodule of the distiller
    # (its state_dict, parameters, DDP wrapper); else it is kept out of them.
    trained: ClassVar[bool] = False

    def __init__(self, detector: nn.Module, cfg: CfgNode):
        """
        Args:
            detector: the teacher detector, its weights loaded.
            cfg: its config (:func:`load_teacher_config`), against which the student's is checked.
        """
        super().__init__()
        if not callable(getattr(detector.roi_heads, "pool_and_predict", None)):
            raise TypeError(
                f"The teacher's ROI heads ({type(detector.roi_heads).__name__}) have no "
                "pool_and_predict(); set MODEL.ROI_HEADS.NAME to 'PedestrianROIHeads' in "
                "the teacher config (MODEL.TEACHER.CONFIG_FILE)"
            )
        self.detector = detector
        self.cfg = cfg

    @property
    def device(self) -> torch.device:
        return self.detector.device

    @torch.no_grad()
    def features(self, batched_inputs: List[Dict]) -> Tuple[ImageList, Dict[str, torch.Tensor]]:
        """Normalise with the teacher's own pixel mean/std and run its backbone.

        Returns the padded images (N, 3, H, W) and the backbone maps, e.g. ``p2``: (N, C, H/4, W/4).
        """
        images = self.detector.preprocess_image(batched_inputs)
        return images, self.detector.backbone(images.tensor)

    @torch.no_grad()
    def rpn_head(self, features: Dict[str, torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """RPN head outputs per level of ``RPN.IN_FEATURES``: objectness (N, A, Hl, Wl) and
        anchor deltas (N, A*4, Hl, Wl)."""
        rpn = self.detector.proposal_generator
        return rpn.rpn_head([features[f] for f in rpn.in_features])

    @torch.no_grad()
    def pool_and_predict(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Pooled RoI features (R, C, S, S) and box-head (scores (R, K+1), deltas (R, 4K))."""
        return self.detector.roi_heads.pool_and_predict(features, proposals)

    def step(self, batched_inputs: List[Dict]) -> TeacherStep:
        """The teacher's work of one training step: its backbone on the step's inputs (no losses)."""
        images, features = self.features(batched_inputs)
        return TeacherStep(images.tensor, features, {})


class FrozenTeacher(Teacher):
    """A teacher that stays in eval mode with gradients off: trained beforehand, never changed."""

    def __init__(self, detector: nn.Module, cfg: CfgNode):
        super().__init__(detector, cfg)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Always eval mode: BatchNorm statistics and dropout of the teacher never change."""
        return super().train(False)


class OnlineTeacher(Teacher):
    """A teacher trained in the student's run, on its own detection losses only.

    Its training step is the detector's own (its RPN proposals, its RoI sampling, its losses);
    what distillation reads of it is detached from that graph (:meth:`step`) or computed under
    ``no_grad``, so the teacher's gradients are those of its detection losses alone.
    """

    trained = True

    @torch.no_grad()
    def features(self, batched_inputs: List[Dict]) -> Tuple[ImageList, Dict[str, torch.Tensor]]:
        """As :meth:`Teacher.features`, in eval mode whatever the training mode: a read between
        training steps (a hook fitting something to the teacher) changes no normalisation statistic."""
        mode = self.detector.training
        self.detector.train(False)
        try:
            return super().features(batched_inputs)
        finally:
            self.detector.train(mode)

    def step(self, batched_inputs: List[Dict]) -> TeacherStep:
        """The detector's training forward on the step's inputs (in training mode; inside an
        EventStorage, whose scalars it writes under ``teacher/``): its losses, as
        ``teacher/<loss>``, and its backbone's input and maps, detached."""
        if not self.training:
            raise RuntimeError("OnlineTeacher.step() trains the teacher: call it in training mode")
        recorded = []
        hook = self.detector.backbone.register_forward_hook(lambda _m, inputs, out: recorded.append((inputs[0], out)))
        try:
            with get_event_storage().name_scope(TEACHER_SCOPE):
                losses = self.detector(batched_inputs)
        finally:
            hook.remove()
        images, features = recorded[-1]
        return TeacherStep(images.detach(), {k: v.detach() for k, v in features.items()},
                           {f"{TEACHER_SCOPE}/{k}": v for k, v in losses.items()})


def build_teacher(cfg: CfgNode) -> Teacher:
    """Build the teacher named by ``cfg.MODEL.TEACHER`` on ``cfg.MODEL.DEVICE``: frozen, or
    online with ``MODEL.TEACHER.ONLINE``."""
    if cfg.MODEL.TEACHER.ONLINE:
        return build_online_teacher(cfg)
    teacher_cfg = load_teacher_config(cfg)
    weights = resolve_path(cfg.MODEL.TEACHER.WEIGHTS, "MODEL.TEACHER.WEIGHTS")
    detector = build_model(teacher_cfg)
    load_detector_weights(detector, weights)
    logger.info(f"Teacher {type(detector).__name__} loaded from {weights}")
    return FrozenTeacher(detector, teacher_cfg)


def build_online_teacher(cfg: CfgNode) -> OnlineTeacher:
    """The teacher trained in the student's run, starting from ``MODEL.TEACHER.WEIGHTS`` when set
    (whole detector or backbone only, as a student's ``MODEL.WEIGHTS``), else as its config initialises it."""
    teacher_cfg = load_teacher_config(cfg)
    detector = build_model(teacher_cfg)
    if cfg.MODEL.TEACHER.WEIGHTS:
        weights = resolve_path(cfg.MODEL.TEACHER.WEIGHTS, "MODEL.TEACHER.WEIGHTS")
        DistillCheckpointer(detector).load(weights)
        logger.info(f"Online teacher {type(detector).__name__} starts from {weights}")
    else:
        logger.info(f"Online teacher {type(detector).__name__} starts from its initialisation (no weights given)")
    return OnlineTeacher(detector, teacher_cfg)

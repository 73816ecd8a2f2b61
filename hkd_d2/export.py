"""Export the student of a distillation run as a plain detector (checkpoint + config).

The written ``student.yaml`` has ``META_ARCHITECTURE: GeneralizedRCNN``, default (unused)
``MODEL.TEACHER``/``MODEL.DISTILL`` and ``MODEL.WEIGHTS`` set to the absolute path of
``student.pth``, which holds exactly the student detector's keys (distillation-only
parameters such as channel adapters are dropped). Load it with::

    import hkd_d2
    cfg = hkd_d2.add_hkd_config(get_cfg()); cfg.merge_from_file("student.yaml")
    predictor = DefaultPredictor(cfg)
"""
import logging
import os
from pathlib import Path
from typing import Dict, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from .atomic import atomic_output
from .config import add_hkd_config
from .modeling.distiller import DISTILL_ONLY_PREFIXES

__all__ = ["export_student", "student_config", "student_state_dict"]

logger = logging.getLogger(__name__)

STUDENT_WEIGHTS = "student.pth"
STUDENT_CONFIG = "student.yaml"


def student_config(cfg: CfgNode) -> CfgNode:
    """The distiller's config turned into the student detector's (teacher/distill keys reset)."""
    defaults = add_hkd_config(get_cfg())
    student = cfg.clone()
    student.defrost()
    student.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    student.MODEL.TEACHER = defaults.MODEL.TEACHER.clone()
    student.MODEL.DISTILL = defaults.MODEL.DISTILL.clone()
    return student


def student_state_dict(
    state: Dict[str, torch.Tensor], expected_keys, source: str
) -> Dict[str, torch.Tensor]:
    """Keep the ``expected_keys`` of ``state``; drop distillation-only keys; raise naming
    ``source`` on any other extra key or on a missing one."""
    kept = {k: v for k, v in state.items() if not k.startswith(DISTILL_ONLY_PREFIXES)}
    missing = sorted(set(expected_keys) - set(kept))
    unexpected = sorted(set(kept) - set(expected_keys))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not hold the student of this config: missing {missing}, unexpected {unexpected}"
        )
    return kept


def export_student(cfg: CfgNode, weights: str, out_dir: str) -> Tuple[str, str]:
    """Write ``student.pth`` and ``student.yaml`` for the student trained under ``cfg``.

    Args:
        cfg: the distillation config (e.g. ``configs/*/hkd_R50_to_R18.yaml``).
        weights: a checkpoint written by the trainer for that config (``model_final.pth``).
        out_dir: output folder (created).

    Returns:
        Paths of the written checkpoint and config.
    """
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Distillation checkpoint not found: {weights}")
    student_cfg = student_config(cfg)
    check_cfg = student_cfg.clone()
    check_cfg.MODEL.DEVICE = "cpu"
    model = build_model(check_cfg)
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = student_state_dict(checkpoint.get("model", checkpoint), model.state_dict().keys(), weights)
    model.load_state_dict(state, strict=True)

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = out / STUDENT_WEIGHTS, out / STUDENT_CONFIG
    with atomic_output(weights_path) as tmp:
        torch.save({"model": state}, tmp)
    student_cfg.MODEL.WEIGHTS = str(weights_path)
    with atomic_output(config_path) as tmp:
        tmp.write_text(student_cfg.dump())
    logger.info(f"Student exported to {weights_path} and {config_path}")
    return str(weights_path), str(config_path)

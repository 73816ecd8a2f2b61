"""Online knowledge distillation by peer collaborative learning (PCL, Wu and Gong, AAAI 2021):
``MODEL.META_ARCHITECTURE "PCLDistiller"`` with ``MODEL.ROI_HEADS.NAME "PCLROIHeads"``, keys
``MODEL.PCL.*``. Importing it registers both."""
from .distiller import PCLDistiller, PCLForward
from .losses import ema_alpha, ema_update_, kd_loss, peer_ensemble_kd, peer_mean_kd, rampup_weight
from .mean_teacher import MEAN_TEACHER_KEY, MeanTeacherHook, build_mean_teacher
from .roi_heads import PCLROIHeads, PeerOutputs, single_peer_state_dict

__all__ = [
    "MEAN_TEACHER_KEY",
    "MeanTeacherHook",
    "PCLDistiller",
    "PCLForward",
    "PCLROIHeads",
    "PeerOutputs",
    "build_mean_teacher",
    "ema_alpha",
    "ema_update_",
    "kd_loss",
    "peer_ensemble_kd",
    "peer_mean_kd",
    "rampup_weight",
    "single_peer_state_dict",
]

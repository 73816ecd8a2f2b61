"""Training machinery of hkd_d2: the distillation hook (and the lead's Trainer)."""
from .hooks import DistillationHook, build_distillation_hooks

__all__ = ["DistillationHook", "build_distillation_hooks"]

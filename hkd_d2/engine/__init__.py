"""Training machinery of hkd_d2: config set-up, the Trainer, the distillation hooks."""
from .hooks import DistillationHook, build_distillation_hooks
from .setup import load_config, resolve_device, setup_config
from .trainer import Trainer

__all__ = [
    "DistillationHook",
    "Trainer",
    "build_distillation_hooks",
    "load_config",
    "resolve_device",
    "setup_config",
]

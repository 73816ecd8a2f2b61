"""Config set-up shared by train_net.py and the tools: hkd keys, clear file errors, CPU fallback."""
import logging
import os
from argparse import Namespace
from typing import List, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup

from ..config import add_hkd_config

__all__ = ["load_config", "resolve_device", "setup_config"]

logger = logging.getLogger(__name__)


def load_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """Detectron2 defaults + hkd keys, merged with ``config_file`` and ``KEY VALUE`` ``opts``."""
    if not config_file:
        raise ValueError("No config file given: pass --config-file path/to/config.yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    return cfg


def resolve_device(cfg: CfgNode) -> CfgNode:
    """Fall back from a CUDA ``MODEL.DEVICE`` to ``cpu``, with one warning, when no GPU exists."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("detectron2").warning(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is available: running on cpu."
        )
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup_config(args: Namespace) -> CfgNode:
    """Build, freeze and log the config for ``train_net.py``-style ``args``."""
    cfg = resolve_device(load_config(args.config_file, args.opts))
    cfg.freeze()
    default_setup(cfg, args)
    return cfg

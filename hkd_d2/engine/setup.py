"""Config set-up shared by train_net.py and the tools: hkd keys, clear file errors, CPU fallback,
logging of the ``hkd_d2`` loggers next to Detectron2's."""
import logging
import os
from argparse import Namespace
from typing import List, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_hkd_config
from ..data.register import register_config_datasets
from ..modeling.teacher import anchor_teacher_paths

__all__ = ["load_config", "resolve_device", "setup_config", "setup_hkd_logger"]

logger = logging.getLogger(__name__)

# Name of the package's root logger (every module logs under it).
HKD_LOGGER = "hkd_d2"


def load_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """Detectron2 defaults + hkd keys, merged with ``config_file`` and ``KEY VALUE`` ``opts``.

    Relative ``MODEL.TEACHER`` paths set by the file (or its ``_BASE_`` chain) are taken
    relative to the file that sets them when they exist there; ``opts`` are taken as given.
    """
    if not config_file:
        raise ValueError("No config file given: pass --config-file path/to/config.yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(config_file)
    anchor_teacher_paths(cfg, config_file)
    cfg.merge_from_list(list(opts or []))
    return cfg


def resolve_device(cfg: CfgNode) -> CfgNode:
    """``cfg``, or a copy on ``cpu`` (frozen if ``cfg`` is, one warning) when its ``MODEL.DEVICE``
    is CUDA and no GPU exists."""
    if not (cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()):
        return cfg
    logging.getLogger("detectron2").warning(
        f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is available: running on cpu."
    )
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if frozen:
        cfg.freeze()
    return cfg


def setup_hkd_logger(output: Optional[str] = None) -> logging.Logger:
    """Console (and, when ``output`` is given, file) logging for ``hkd_d2``, as Detectron2's
    ``setup_logger`` does for ``detectron2``: ``output`` is a folder (``log.txt`` in it) or a
    file name; processes other than the main one log to ``log.txt.rank<k>``."""
    return setup_logger(output, distributed_rank=comm.get_rank(), name=HKD_LOGGER, abbrev_name="hkd")


def setup_config(args: Namespace) -> CfgNode:
    """Build, freeze and log the config for ``train_net.py``-style ``args``; register the
    JSON data sets it names (``DATASETS.PEDESTRIAN_JSON``)."""
    cfg = resolve_device(load_config(args.config_file, args.opts))
    cfg.freeze()
    default_setup(cfg, args)
    setup_hkd_logger(cfg.OUTPUT_DIR)
    register_config_datasets(cfg)
    return cfg

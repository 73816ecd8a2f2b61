"""The configs shipped with hkd_d2, by name, as ``detectron2.model_zoo`` offers Detectron2's.

    from hkd_d2 import model_zoo
    cfg = model_zoo.get_config("caltech/hkd_R50_to_R18.yaml")       # hkd keys added, paths resolved
    path = model_zoo.get_config_file("synthetic/student_R18_FPN.yaml")

Names are paths under the repository's ``configs/`` folder, which is installed with the package
(as ``hkd_d2/configs``), so they work from a checkout and from an installed wheel alike.
"""
import difflib
from importlib import resources
from pathlib import Path
from typing import List, Optional

from detectron2.config import CfgNode

from .engine.setup import load_config

__all__ = ["get_config", "get_config_file", "list_configs"]

# Folder of the shipped configs inside the package.
CONFIGS_DIR = "configs"
# How many similar names an unknown-name error suggests.
SUGGESTIONS = 3


def _configs_root() -> Path:
    return Path(str(resources.files(__package__).joinpath(CONFIGS_DIR)))


def list_configs() -> List[str]:
    """Names of every shipped config (``"<dataset>/<name>.yaml"``), sorted."""
    root = _configs_root()
    return sorted(p.relative_to(root).as_posix() for p in root.glob("**/*.yaml"))


def get_config_file(config_path: str) -> str:
    """Absolute path of the shipped config ``config_path`` (e.g. ``"caltech/hkd_R50_to_R18.yaml"``).

    Raises ``FileNotFoundError`` naming it, with the closest shipped names.
    """
    path = _configs_root() / config_path
    if not path.is_file():
        close = difflib.get_close_matches(config_path, list_configs(), n=SUGGESTIONS, cutoff=0.4)
        raise FileNotFoundError(f"{config_path!r} is not a config shipped with hkd_d2; closest: {close}")
    return str(path.resolve())


def get_config(config_path: str, opts: Optional[List[str]] = None) -> CfgNode:
    """The shipped config ``config_path`` as :func:`hkd_d2.engine.load_config` loads it
    (Detectron2 defaults + hkd keys, teacher paths resolved), with ``KEY VALUE`` ``opts``."""
    return load_config(get_config_file(config_path), opts)

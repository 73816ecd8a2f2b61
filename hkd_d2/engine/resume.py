"""What ``--resume`` tells the user: config keys changed since the checkpoint, a finished run.

Detectron2 restores the optimizer and the LR scheduler from the checkpoint, so a changed
``SOLVER.BASE_LR`` (or ``STEPS``, ``GAMMA``...) does not act as it would on a fresh run; each
checkpoint carries its run's config (:data:`~hkd_d2.checkpoint.CONFIG_KEY`) so that the
differences can be listed.
"""
from typing import Any, Dict, List, Tuple

from detectron2.config import CfgNode

__all__ = ["config_changes", "describe_config_changes"]

# Keys that differ between runs without changing what is trained.
IGNORED_KEYS = frozenset({"OUTPUT_DIR", "MODEL.WEIGHTS"})


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def config_changes(saved_yaml: str, cfg: CfgNode) -> List[Tuple[str, Any, Any]]:
    """``(key, value in the checkpoint's run, value now)`` for every key that differs, sorted.

    A key only one side has gets ``"<absent>"`` on the other.
    """
    saved = _flatten(CfgNode.load_cfg(saved_yaml))
    now = _flatten(CfgNode.load_cfg(cfg.dump()))  # through YAML, like the saved side (tuples -> lists)
    absent = "<absent>"
    return [
        (key, saved.get(key, absent), now.get(key, absent))
        for key in sorted(set(saved) | set(now))
        if key not in IGNORED_KEYS and saved.get(key, absent) != now.get(key, absent)
    ]


def describe_config_changes(changes: List[Tuple[str, Any, Any]], checkpoint: str) -> str:
    """One warning listing ``changes`` (see :func:`config_changes`) against ``checkpoint``."""
    lines = [f"Resuming from {checkpoint}, whose run had another config ({len(changes)} keys differ):"]
    lines += [f"  {key}: {old!r} -> {new!r}" for key, old, new in changes]
    lines.append(
        "The optimizer and LR-scheduler state come from the checkpoint: SOLVER changes such as "
        "BASE_LR or STEPS do not act as on a fresh run (train into a new OUTPUT_DIR for that)."
    )
    return "\n".join(lines)

"""Trainer.__init__ runs every step of DefaultTrainer.__init__ (so an upstream addition is noticed)."""
import ast
import inspect
import textwrap

from detectron2.engine import DefaultTrainer

from hkd_d2.engine import Trainer

# DefaultTrainer.__init__ names that Trainer.__init__ replaces, with what replaces them.
REPLACED = {
    "super": "TrainerBase",  # TrainerBase.__init__(self): DefaultTrainer's own __init__ is not run
    "logger": "getLogger",  # a local variable there
    "create_ddp_model": "wrap_model",  # passes CUDA device ids, refused for a CPU model
    "DetectionCheckpointer": "build_checkpointer",
    "weakref": "build_checkpointer",  # weakref.proxy(self), the checkpointer's trainer
    "proxy": "build_checkpointer",
}


def _names(function) -> set:
    """Every name and attribute a function's body refers to."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = set()
    for node in ast.walk(tree.body[0]):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return names


def test_trainer_init_has_every_step_of_default_trainer_init():
    default, ours = _names(DefaultTrainer.__init__), _names(Trainer.__init__)
    missing = default - ours
    assert missing == set(REPLACED), (
        f"DefaultTrainer.__init__ uses {sorted(missing - set(REPLACED))}, which hkd_d2.engine.Trainer.__init__ "
        "does not: add that step there"
    )
    assert set(REPLACED.values()) <= ours

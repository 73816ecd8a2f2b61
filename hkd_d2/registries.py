"""Registries that :mod:`hkd_d2.config` reads, kept apart from the modules that fill them (those import
the config module, so it cannot import them)."""
from detectron2.utils.registry import Registry

__all__ = ["DISTILL_TERM_REGISTRY"]

DISTILL_TERM_REGISTRY = Registry("DISTILL_TERM")
DISTILL_TERM_REGISTRY.__doc__ = """
Distillation terms (:class:`hkd_d2.modeling.distill.DistillTerm`). Each is called as
``Term(cfg, student_shapes, teacher_shapes)`` where the shapes are ``Dict[str, ShapeSpec]`` of the two
backbones' outputs, and returns a term whose ``losses(ctx: DistillContext) -> Dict[str, Tensor]`` gives
its raw losses. :func:`hkd_d2.config.add_hkd_config` adds every registered term's config node.
"""

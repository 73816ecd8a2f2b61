from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, build_distill_terms  # noqa: F401

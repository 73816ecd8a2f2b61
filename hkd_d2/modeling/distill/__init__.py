from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, build_distill_terms  # noqa: F401
from . import hkd  # noqa: F401  (registers PyramidDistill, RegionDistill, LogitDistill)
from . import chen2017, fgfi, gkd, pkd  # noqa: F401  (registers the literature terms)

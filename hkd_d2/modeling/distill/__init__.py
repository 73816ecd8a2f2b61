from .base import (  # noqa: F401
    DISTILL_TERM_REGISTRY,
    DistillContext,
    DistillTerm,
    build_distill_terms,
    enabled_term_classes,
    unwrap_ddp,
)
from .schedule import DistillSchedule, linear_warmup  # noqa: F401
from . import hkd  # noqa: F401  (registers PyramidDistill, RegionDistill, LogitDistill)
from . import bkd, chen2017, fgfi, gkd, pkd, srm  # noqa: F401  (registers the literature terms)

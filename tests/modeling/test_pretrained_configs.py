"""The pre-trained setting's configs: each is its from-scratch counterpart plus pre-trained weights,
a frozen stem and res2, frozen BatchNorm, a lower learning rate (and, for distillation, the
pre-trained teacher)."""
from pathlib import PurePosixPath

import pytest

from hkd_d2.engine.resume import config_changes
from hkd_d2.engine.setup import load_config
from hkd_d2.modeling.teacher import load_teacher_config
from hkd_d2.tools.pretrain import DEFAULT_OUT

from ..conftest import CONFIGS

SYNTHETIC = CONFIGS / "synthetic"
PRETRAINED = SYNTHETIC / "pretrained"
# pre-trained config (path under pretrained/) -> (from-scratch counterpart, ResNet depth)
COUNTERPARTS = {
    "teacher_R50_FPN_pretrained": ("teacher_R50_FPN", 50),
    "teacher_R50_FPN_PyRoIAlign_pretrained": ("teacher_R50_FPN_PyRoIAlign", 50),
    "student_R18_FPN_pretrained": ("student_R18_FPN", 18),
    "t3_1_baseline_pretrained": ("table3/t3_1_baseline", 18),
    "t3_2_pyroialign_pretrained": ("table3/t3_2_pyroialign", 18),
    "t3_7_pd_rd_ld_pretrained": ("table3/t3_7_pd_rd_ld", 18),
    "t3_8_pd_rd_ld_pyroialign_pretrained": ("table3/t3_8_pd_rd_ld_pyroialign", 18),
    "t3_2_pyroialign_fuse_mean_pretrained": ("findings/pyroialign_fuse_mean", 18),
    **{f"literature/{m}": (f"literature/{m}", 18)
       for m in ("srm", "bkd", "isl", "hkd_plus_srm", "hkd_plus_bkd", "hkd_plus_isl")},
    "online/pcl": ("online/pcl", 18),
}
# Variants without a from-scratch counterpart: (pre-trained config they vary, the keys they change).
VARIANTS = {
    "t3_2_pyroialign_fuse_lr10_pretrained": ("t3_2_pyroialign_pretrained",
                                             {"MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_LR_FACTOR"}),
    "online/pcl_ema_0.99": ("online/pcl", {"MODEL.PCL.EMA_DECAY"}),
    "online/online_teacher_pd_rd_ld": ("t3_7_pd_rd_ld_pretrained",
                                       {"MODEL.TEACHER.ONLINE", "MODEL.TEACHER.WEIGHTS", "MODEL.DISTILL.WARMUP_ITERS"}),
}
# What the pre-trained setting changes (besides MODEL.WEIGHTS and OUTPUT_DIR, checked below).
CHANGED = {"MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.NORM", "SOLVER.BASE_LR", "MODEL.TEACHER.CONFIG_FILE",
           "MODEL.TEACHER.WEIGHTS"}


def _output_tail(cfg, stem: str) -> tuple:
    """The last folders of ``cfg.OUTPUT_DIR``: 'pretrained' and those of ``stem``."""
    return PurePosixPath(cfg.OUTPUT_DIR).parts[-1 - len(PurePosixPath(stem).parts):]


def _differences(cfg, scratch):
    return {key for key, _, _ in config_changes(scratch.dump(), cfg)}


def test_every_pretrained_config_is_checked():
    found = sorted(str(p.relative_to(PRETRAINED).with_suffix("")) for p in PRETRAINED.glob("**/*.yaml"))
    assert found == sorted([*COUNTERPARTS, *VARIANTS])


@pytest.mark.parametrize("stem", sorted(VARIANTS))
def test_variant_changes_only_its_keys(stem):
    base, keys = VARIANTS[stem]
    cfg, base_cfg = load_config(str(PRETRAINED / f"{stem}.yaml")), load_config(str(PRETRAINED / f"{base}.yaml"))
    assert _differences(cfg, base_cfg) == keys
    assert _output_tail(cfg, stem) == ("pretrained", *PurePosixPath(stem).parts)


@pytest.mark.parametrize("stem", sorted(COUNTERPARTS))
def test_pretrained_config_differs_from_scratch_only_where_it_should(stem):
    counterpart, depth = COUNTERPARTS[stem]
    cfg = load_config(str(PRETRAINED / f"{stem}.yaml"))
    scratch = load_config(str(SYNTHETIC / f"{counterpart}.yaml"))
    assert _differences(cfg, scratch) <= CHANGED
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.WEIGHTS == DEFAULT_OUT.format(depth=depth)
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2 and scratch.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.FPN.NORM == scratch.MODEL.FPN.NORM == "GN"
    assert cfg.SOLVER.BASE_LR < scratch.SOLVER.BASE_LR
    assert _output_tail(cfg, stem) == ("pretrained", *PurePosixPath(stem).parts)
    if cfg.MODEL.META_ARCHITECTURE == "HKDDistiller":
        teacher, scratch_teacher = load_teacher_config(cfg), load_teacher_config(scratch)
        assert _differences(teacher, scratch_teacher) <= CHANGED
        assert teacher.MODEL.BACKBONE.FREEZE_AT == 2 and teacher.MODEL.RESNETS.NORM == "FrozenBN"
        assert "pretrained" in teacher.OUTPUT_DIR
        assert teacher.MODEL.ROI_BOX_HEAD.POOLER_NAME == cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME
        assert PurePosixPath(cfg.MODEL.TEACHER.WEIGHTS).parts[:2] == ("output", "synthetic")
        assert PurePosixPath(cfg.MODEL.TEACHER.WEIGHTS).parent.name == PurePosixPath(teacher.OUTPUT_DIR).name

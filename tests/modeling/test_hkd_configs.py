"""The shipped HKD and Table 3 configs: they load, name the right terms, pooler and teacher."""
import pytest

from hkd_d2.engine.setup import load_config
from hkd_d2.modeling.teacher import load_teacher_config

from ..hkd_helpers import CONFIGS

ALL = ["PyramidDistill", "RegionDistill", "LogitDistill"]
# Table 3 rows: (file stem, distillation terms or None for a plain student, pooler).
TABLE3 = [
    ("t3_1_baseline", None, "LevelROIPooler"),
    ("t3_2_pyroialign", None, "PyRoIAlign"),
    ("t3_3_ld", ["LogitDistill"], "LevelROIPooler"),
    ("t3_4_rd", ["RegionDistill"], "LevelROIPooler"),
    ("t3_5_rd_pyroialign", ["RegionDistill"], "PyRoIAlign"),
    ("t3_6_rd_ld_pyroialign", ["RegionDistill", "LogitDistill"], "PyRoIAlign"),
    ("t3_7_pd_rd_ld", ALL, "LevelROIPooler"),
    ("t3_8_pd_rd_ld_pyroialign", ALL, "PyRoIAlign"),
]


def _load(path):
    return load_config(str(path))


@pytest.mark.parametrize("dataset", ["synthetic", "caltech", "citypersons"])
def test_hkd_config_names_its_teacher(dataset):
    cfg = _load(CONFIGS / dataset / "hkd_R50_to_R18.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "Distiller"
    assert list(cfg.MODEL.DISTILL.TERMS) == ALL
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME == "PyRoIAlign"
    teacher = load_teacher_config(cfg)
    assert teacher.MODEL.RESNETS.DEPTH == 50 and teacher.DATASETS.TRAIN == cfg.DATASETS.TRAIN
    assert teacher.MODEL.ROI_BOX_HEAD.POOLER_NAME == "PyRoIAlign"  # both models use it


@pytest.mark.parametrize("dataset", ["synthetic", "caltech"])
@pytest.mark.parametrize("stem, terms, pooler", TABLE3)
def test_table3_rows(dataset, stem, terms, pooler):
    cfg = _load(CONFIGS / dataset / "table3" / f"{stem}.yaml")
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME == pooler
    assert cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.OUTPUT_DIR.endswith(f"{dataset}/table3/{stem}")
    if terms is None:
        assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    else:
        assert cfg.MODEL.META_ARCHITECTURE == "Distiller"
        assert list(cfg.MODEL.DISTILL.TERMS) == terms
        # teacher and student pool alike: PyRoIAlign in both, or level-assigned in both
        assert load_teacher_config(cfg).MODEL.ROI_BOX_HEAD.POOLER_NAME == pooler

"""configs/crowdhuman and configs/ecp: load with the project's keys, name registered data sets
whose metadata picks the right evaluator."""
import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

import hkd_d2  # noqa: F401  (registers the built-in names)
from hkd_d2.config import add_hkd_config

from ..conftest import CONFIGS

EXPECTED = {"crowdhuman": ("crowdhuman", "crowdhuman"), "ecp": ("ecp", "miss_rate")}


@pytest.mark.parametrize("bench", sorted(EXPECTED))
@pytest.mark.parametrize("name,depth,arch", [
    ("teacher_R50_FPN", 50, "GeneralizedRCNN"),
    ("teacher_R50_FPN_PyRoIAlign", 50, "GeneralizedRCNN"),
    ("student_R18_FPN", 18, "GeneralizedRCNN"),
    ("hkd_R50_to_R18", 18, "Distiller"),
])
def test_config_loads_and_picks_evaluator(bench, name, depth, arch):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / bench / f"{name}.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.META_ARCHITECTURE == arch
    assert cfg.OUTPUT_DIR.endswith(f"{bench}/{name}")
    if arch == "Distiller":
        assert cfg.MODEL.TEACHER.CONFIG_FILE == f"configs/{bench}/teacher_R50_FPN_PyRoIAlign.yaml"
    for dataset in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(dataset)
        assert (meta.protocol, meta.evaluator_type) == EXPECTED[bench]

"""Every literature config (alone and with HKD) trains 2 tiny iterations with its terms' losses."""
import math
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from hkd_d2.config import add_hkd_config

from ..hkd_helpers import TINY, _merge, train_iterations, write_teacher
from ..conftest import CONFIGS

# Losses each method must report, and those that must be nonzero on the tiny batch (the
# teacher-bounded regressions may legitimately be 0 when the student already beats the teacher).
METHOD_LOSSES = {
    "chen2017": ({"loss_chen2017_cls", "loss_chen2017_reg", "loss_chen2017_rpn_cls",
                  "loss_chen2017_rpn_reg", "loss_chen2017_hint"},
                 {"loss_chen2017_cls", "loss_chen2017_rpn_cls", "loss_chen2017_hint"}),
    "fgfi": ({"loss_fgfi"}, {"loss_fgfi"}),
    "pkd": ({"loss_pkd"}, {"loss_pkd"}),
    "gkd": ({"loss_gkd_fg", "loss_gkd_bg", "loss_gkd_kd"}, {"loss_gkd_fg", "loss_gkd_bg", "loss_gkd_kd"}),
}
HKD_LOSSES = {"loss_pd", "loss_rd", "loss_ld"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher"))


TERM_NAMES = {"chen2017": "Chen2017Distill", "fgfi": "FGFIDistill", "pkd": "PKDDistill", "gkd": "GKDDistill"}


@pytest.mark.parametrize("dataset", ["synthetic", "caltech"])
def test_every_literature_config_exists_and_lists_its_terms(dataset):
    paths = sorted((CONFIGS / dataset / "literature").glob("*.yaml"))
    assert sorted(p.stem for p in paths) == sorted([*METHOD_LOSSES, *(f"hkd_plus_{m}" for m in METHOD_LOSSES)])
    for path in paths:
        cfg = add_hkd_config(get_cfg())
        cfg.merge_from_file(str(path))
        method = path.stem.replace("hkd_plus_", "")
        hkd = ["PyramidDistill", "RegionDistill", "LogitDistill"] if path.stem.startswith("hkd_plus_") else []
        assert list(cfg.MODEL.DISTILL.TERMS) == [*hkd, TERM_NAMES[method]], path
        assert cfg.MODEL.META_ARCHITECTURE == "Distiller"
        assert cfg.OUTPUT_DIR.endswith(f"{dataset}/literature/{path.stem}")


@pytest.mark.parametrize("name", [*METHOD_LOSSES, *(f"hkd_plus_{m}" for m in METHOD_LOSSES)])
def test_config_trains_two_iterations(name, teacher):
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / "synthetic" / "literature" / f"{name}.yaml"))
    cfg = _merge(cfg, {**TINY, **teacher})
    method = name.replace("hkd_plus_", "")
    expected, nonzero = METHOD_LOSSES[method]
    if name.startswith("hkd_plus_"):
        expected, nonzero = expected | HKD_LOSSES, nonzero | HKD_LOSSES

    def check(losses):
        assert expected <= set(losses)
        assert all(math.isfinite(losses[k].item()) for k in losses), losses
        assert all(losses[k].item() != 0 for k in nonzero), losses

    train_iterations(cfg, check=check)

"""Every literature config (alone and with HKD) trains 2 tiny iterations with its terms' losses;
the newer ones (SRM, BKD, ISL, and BKD on three classes) through the Trainer with their hooks."""
import json
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from hkd_d2.config import add_hkd_config
from hkd_d2.data.citypersons import CITYPERSONS_MULTICLASS
from hkd_d2.data.curriculum import CURRICULUM_SAMPLER
from hkd_d2.engine import Trainer

from ..hkd_helpers import TINY, _merge, register_tiny_citypersons, train_iterations, trainer_cfg, write_teacher
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
    "srm": ({"loss_srm"}, {"loss_srm"}),
    "bkd": ({"loss_bkd"}, {"loss_bkd"}),
}
HKD_LOSSES = {"loss_pd", "loss_rd", "loss_ld"}
# Methods that are a training-data order, not a term (their configs select a sampler).
CURRICULA = ("isl",)
METHODS = (*METHOD_LOSSES, *CURRICULA)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher"))


TERM_NAMES = {"chen2017": "Chen2017Distill", "fgfi": "FGFIDistill", "pkd": "PKDDistill", "gkd": "GKDDistill",
              "srm": "SRMDistill", "bkd": "BKDDistill"}


@pytest.mark.parametrize("dataset", ["synthetic", "caltech"])
def test_every_literature_config_exists_and_lists_its_terms(dataset):
    paths = sorted((CONFIGS / dataset / "literature").glob("*.yaml"))
    assert sorted(p.stem for p in paths) == sorted([*METHODS, *(f"hkd_plus_{m}" for m in METHODS)])
    for path in paths:
        cfg = add_hkd_config(get_cfg())
        cfg.merge_from_file(str(path))
        method = path.stem.replace("hkd_plus_", "")
        hkd = ["PyramidDistill", "RegionDistill", "LogitDistill"] if path.stem.startswith("hkd_plus_") else []
        assert cfg.OUTPUT_DIR.endswith(f"{dataset}/literature/{path.stem}")
        if method in CURRICULA:
            assert cfg.DATALOADER.SAMPLER_TRAIN == CURRICULUM_SAMPLER, path
            # Alone: the student trained alone, in the curriculum's order.
            assert cfg.MODEL.META_ARCHITECTURE == ("Distiller" if hkd else "GeneralizedRCNN"), path
            if hkd:
                assert list(cfg.MODEL.DISTILL.TERMS) == hkd, path
            continue
        assert list(cfg.MODEL.DISTILL.TERMS) == [*hkd, TERM_NAMES[method]], path
        assert cfg.MODEL.META_ARCHITECTURE == "Distiller"


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


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    return register_tiny_citypersons(tmp_path_factory.mktemp("literature_data"), "literature_tiny_train")


def _train(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _metrics(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]


NEW_CONFIGS = ["srm", "bkd", "isl", "hkd_plus_srm", "hkd_plus_bkd", "hkd_plus_isl"]


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_config_trains_two_iterations_through_the_trainer(name, teacher, tiny_train, tmp_path):
    overrides = {"MODEL.DISTILL.SRM.DICTIONARY_ITERS": 2, "DATALOADER.CURRICULUM.PHASE_ITERS": 1}
    cfg = trainer_cfg(CONFIGS / "synthetic" / "literature" / f"{name}.yaml", teacher, tiny_train, tmp_path, **overrides)
    trainer = _train(cfg)
    last = [m for m in _metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 1 and math.isfinite(last["total_loss"])
    method = name.replace("hkd_plus_", "")
    expected = METHOD_LOSSES.get(method, (set(), set()))[0] | (HKD_LOSSES if name.startswith("hkd_plus_") else set())
    assert expected <= set(last), sorted(last)
    model = trainer.model
    if method == "srm":  # stage 1 ran before training
        assert bool(model.distill_terms[-1].codebook.ready)
    if method == "isl":  # ranked at the boundary (iteration 1), kept in the final checkpoint
        hook_state = torch.load(tmp_path / "model_final.pth", weights_only=False)["trainer"]["hooks"]["CurriculumHook"]
        assert hook_state["boundary"] == 1 and sorted(hook_state["order"].tolist()) == list(range(4))
        assert torch.isfinite(hook_state["scores"]).all()


def test_bkd_on_three_classes_weighs_the_rare_classes_more(tmp_path):
    train = register_tiny_citypersons(
        tmp_path / "mc", "literature_tiny_multiclass_train", classes=CITYPERSONS_MULTICLASS,
        kind_weights={"pedestrian": 0.6, "rider": 0.3, "sitting": 0.1},
    )
    teacher = write_teacher(tmp_path, **{"MODEL.ROI_HEADS.NUM_CLASSES": 3})
    cfg = trainer_cfg(CONFIGS / "synthetic" / "multiclass" / "bkd.yaml", teacher, train, tmp_path / "out")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    trainer = _train(cfg)
    term = trainer.model.distill_terms[0]
    counts = term.class_counts.tolist()
    assert counts[0] > counts[1] > 0 and counts[3] == 0  # pedestrians outnumber riders; no background count
    weights = term.class_weights().tolist()
    assert weights[1] > weights[0] and weights[3] == 1.0
    assert "loss_bkd" in _metrics(tmp_path / "out")[-1]


@pytest.mark.parametrize("dataset", ["synthetic", "citypersons"])
def test_multiclass_configs_train_and_test_on_three_class_data(dataset):
    folder = CONFIGS / dataset / "multiclass"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == ["bkd", "student_R18_FPN", "teacher_R50_FPN"]
    for path in folder.glob("*.yaml"):
        cfg = add_hkd_config(get_cfg())
        cfg.merge_from_file(str(path))
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.OUTPUT_DIR.endswith(f"{dataset}/multiclass/{path.stem}")
        for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
            assert MetadataCatalog.get(name).thing_classes == list(CITYPERSONS_MULTICLASS)
        if path.stem == "bkd":
            assert list(cfg.MODEL.DISTILL.TERMS) == ["BKDDistill"] and cfg.MODEL.DISTILL.BKD.COUNT == "annotations"
            assert cfg.MODEL.TEACHER.CONFIG_FILE == "teacher_R50_FPN.yaml"

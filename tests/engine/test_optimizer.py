"""Learning-rate factors: the named parameters get their own group at factor x lr, nothing else changes."""
import torch
from detectron2.solver import build_optimizer as build_detectron2_optimizer

from hkd_d2.engine.optimizer import FUSE_PREFIX, build_optimizer, lr_factors
from hkd_d2.engine.setup import load_config
from hkd_d2.engine.trainer import Trainer

from ..conftest import CONFIGS

PYROIALIGN = str(CONFIGS / "synthetic" / "table3" / "t3_2_pyroialign.yaml")


def lrs_by_name(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_factor_one_is_detectron2s_optimizer():
    cfg = load_config(PYROIALIGN)
    assert lr_factors(cfg) == {}
    model = Trainer.build_model(cfg)
    ours, theirs = build_optimizer(cfg, model), build_detectron2_optimizer(cfg, model)
    assert [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in theirs.param_groups]
    assert [[id(p) for p in g["params"]] for g in ours.param_groups] == [
        [id(p) for p in g["params"]] for g in theirs.param_groups]


def test_fusion_conv_learns_at_its_factor_and_the_rest_as_before():
    cfg = load_config(PYROIALIGN, ["MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_LR_FACTOR", "10.0"])
    model = Trainer.build_model(cfg)
    plain = lrs_by_name(build_detectron2_optimizer(cfg, model), model)
    scaled = lrs_by_name(Trainer.build_optimizer(cfg, model), model)
    assert sorted(scaled) == sorted(plain)  # every parameter once, none lost
    fuse = [n for n in plain if n.startswith(FUSE_PREFIX)]
    assert fuse == ["roi_heads.box_pooler.fuse.weight", "roi_heads.box_pooler.fuse.bias"]
    for name, lr in plain.items():
        assert scaled[name] == (10 * lr if name in fuse else lr), name
    # the bias keeps Detectron2's BIAS_LR_FACTOR on top of the fusion factor
    assert scaled["roi_heads.box_pooler.fuse.bias"] == 10 * cfg.SOLVER.BASE_LR * cfg.SOLVER.BIAS_LR_FACTOR


def test_scheduler_scales_the_fusion_group_with_the_others():
    cfg = load_config(PYROIALIGN, ["MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_LR_FACTOR", "4.0"])
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    model.zero_grad()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = lrs_by_name(optimizer, model)
    assert lrs["roi_heads.box_pooler.fuse.weight"] == torch.tensor(4.0).item() * lrs["roi_heads.box_head.fc1.weight"]

"""ISL scoring hook: scores by hand, a snapshot that changes nothing, shards, ranking, resumption."""
from types import SimpleNamespace

import pytest
import torch
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.utils import comm

from hkd_d2.data.curriculum import CurriculumSampler, easiest_first
from hkd_d2.engine import Trainer
from hkd_d2.engine.curriculum import (
    CurriculumHook,
    detection_loss,
    frozen_snapshot,
    score_images,
    teacher_distance,
)
from hkd_d2.modeling.teacher import build_teacher

from ..conftest import CONFIGS
from ..hkd_helpers import batch, hkd_cfg, register_tiny_citypersons, trainer_cfg, write_teacher


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    teacher_files = write_teacher(tmp_path_factory.mktemp("teacher"))
    cfg = hkd_cfg(teacher_files)
    torch.manual_seed(0)
    student = build_model(cfg)  # a Distiller: its detection losses are GeneralizedRCNN's
    return cfg, student, build_teacher(cfg)


def _records():
    """Four one-image 'records' whose mapping is the identity (tests pass mapped inputs)."""
    return [batch(seed=i)[i % 2] for i in range(4)]


def test_snapshot_changes_no_weight_statistic_random_stream_or_mode(setup):
    _, student, _ = setup
    student.eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rng = torch.get_rng_state()
    with frozen_snapshot(student, seed=5) as snap:
        assert snap.training and not snap.backbone.bottom_up.stem.conv1.norm.training  # BN frozen
        detection_loss(snap, None, [_records()[0]])
        torch.rand(3)
    assert not student.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_scores_are_each_images_own_detection_loss_and_teacher_distance(setup):
    _, student, teacher = setup
    records = _records()
    scores = score_images(student, None, records, lambda r: r, detection_loss, seed=3)
    with frozen_snapshot(student, seed=3):
        first = float(sum(GeneralizedRCNN.forward(student, [records[0]]).values()))
    assert scores[0].item() == pytest.approx(first, rel=1e-5) and torch.isfinite(scores).all()
    distances = score_images(student, teacher, records, lambda r: r, teacher_distance)
    with torch.no_grad():
        s = student.backbone(student.preprocess_image([records[2]]).tensor)
        _, t = teacher.features([records[2]])
        by_hand = sum(((s[f] - t[f]) ** 2).mean().item() for f in s) / len(s)
    assert distances[2].item() == pytest.approx(by_hand, rel=1e-5)


def test_each_process_scores_its_shard(setup, monkeypatch):
    _, student, _ = setup
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda local: [local])  # this process's part only
    scores = score_images(student, None, _records(), lambda r: r, detection_loss)
    assert torch.isnan(scores[[0, 2]]).all() and torch.isfinite(scores[[1, 3]]).all()


def test_hook_ranks_at_boundaries_and_its_state_restores_the_sampler(setup):
    cfg, student, _ = setup
    cfg = cfg.clone()
    cfg.DATALOADER.CURRICULUM.PHASE_ITERS = 3
    cfg.SOLVER.MAX_ITER = 7
    records = _records()
    sampler = CurriculumSampler(len(records), 2, 0.5, 3, seed=0)
    hook = CurriculumHook(cfg, SimpleNamespace(records=records, sampler=sampler))
    hook.mapper = lambda r: r
    hook.trainer = SimpleNamespace(model=student, iter=0, start_iter=0)
    assert hook.state_dict() == {}
    ranked_at = []
    for it in range(7):
        hook.trainer.iter = it
        hook.after_step()
        ranked_at.append(sampler.boundary)
    assert ranked_at == [-1, -1, 3, 3, 3, 6, 6]  # boundaries 3 and 6 (< MAX_ITER 7)
    assert sampler.order.tolist() == easiest_first(hook.scores).tolist()
    state = hook.state_dict()
    fresh = CurriculumSampler(len(records), 2, 0.5, 3, seed=0)
    restored = CurriculumHook(cfg, SimpleNamespace(records=records, sampler=fresh))
    restored.load_state_dict(state)
    restored.trainer = SimpleNamespace(start_iter=7)
    restored.before_train()
    assert fresh.order.tolist() == sampler.order.tolist() and fresh.boundary == 6
    assert torch.equal(restored.scores, hook.scores)


def test_unknown_score_is_named(setup):
    cfg = setup[0].clone()
    cfg.DATALOADER.CURRICULUM.SCORE = "entropy"
    with pytest.raises(ValueError, match="DATALOADER.CURRICULUM.SCORE 'entropy'"):
        CurriculumHook(cfg, SimpleNamespace(records=[{}], sampler=None))


def test_resumed_training_keeps_the_ranking(tmp_path):
    train = register_tiny_citypersons(tmp_path / "d", "curriculum_tiny_train")
    teacher = write_teacher(tmp_path)
    config = CONFIGS / "synthetic" / "literature" / "isl.yaml"
    cfg = trainer_cfg(config, teacher, train, tmp_path / "out", **{"DATALOADER.CURRICULUM.PHASE_ITERS": 1,
                                                                   "SOLVER.CHECKPOINT_PERIOD": 2})
    first = Trainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    sampler = first.data_loader.curriculum.sampler
    order, boundary = sampler.order.tolist(), sampler.boundary
    assert boundary == 1
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 3
    cfg.DATALOADER.CURRICULUM.PHASE_ITERS = 5  # no new ranking in the resumed part
    second = Trainer(cfg)
    second.resume_or_load(resume=True)
    resumed = second.data_loader.curriculum.sampler
    assert resumed.order.tolist() == order and resumed.boundary == 1
    second.train()
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2 and final["trainer"]["hooks"]["CurriculumHook"]["order"].tolist() == order

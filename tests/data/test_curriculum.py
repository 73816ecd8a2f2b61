"""Curriculum sampler: pacing, easiest-first pools, rank shards, resumption; values by hand."""
import itertools
import math

import pytest
import torch
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm
from torch.utils.data import DataLoader

from hkd_d2.data.curriculum import CurriculumSampler, easiest_first, pool_fraction

SCORES = torch.tensor([0.7, 0.1, 0.9, 0.3, 0.5, 0.2, 0.8, 0.4])
# Ascending: 0.1 (1), 0.2 (5), 0.3 (3), 0.4 (7), 0.5 (4), 0.7 (0), 0.8 (6), 0.9 (2).
EASIEST = [1, 5, 3, 7, 4, 0, 6, 2]


def _sampler(start_fraction=0.25, growth=4, seed=3, per_iteration=2):
    return CurriculumSampler(len(SCORES), per_iteration, start_fraction, growth, seed=seed)


def _draws(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_pacing_fraction():
    assert pool_fraction(10, -1, 0.25, 4) == 1.0  # no ranking yet: every image
    assert [pool_fraction(i, 4, 0.25, 4) for i in (4, 5, 6, 8, 20)] == [0.25, 0.4375, 0.625, 1.0, 1.0]
    assert pool_fraction(2, 4, 0.25, 4) == 0.25  # a draw prepared before its boundary: the start


def test_easiest_first_orders_by_score_ties_by_index_nan_last():
    assert easiest_first(SCORES).tolist() == EASIEST
    assert easiest_first(torch.tensor([0.5, float("nan"), 0.5, 0.1])).tolist() == [3, 0, 2, 1]


def test_after_a_ranking_the_pool_is_the_k_lowest_scores_growing_to_all():
    sampler = _sampler()
    sampler.set_order(easiest_first(SCORES), boundary=0)
    # 2 images per iteration; pool sizes per iteration: ceil(8 * fraction) = 2, 4, 5, 7, 8, ...
    assert [sampler.pool_size(i) for i in range(5)] == [2, 4, 5, 7, 8]
    stream = _draws(sampler, 21)
    # Rounds (a permutation of the pool at the round's start, each image once): positions 0-1
    # (iteration 0, pool 2), 2-5 (iteration 1, pool 4), 6-12 (iteration 3, pool 7), 13-20 (iteration 6, all).
    rounds = [stream[0:2], stream[2:6], stream[6:13], stream[13:21]]
    assert [sorted(r) for r in rounds] == [sorted(EASIEST[:n]) for n in (2, 4, 7, 8)]


def test_before_any_ranking_every_image_once_per_round():
    stream = _draws(_sampler(), 16)
    assert sorted(stream[:8]) == list(range(8)) and sorted(stream[8:]) == list(range(8))


def test_same_seed_same_stream_and_ranks_take_disjoint_shards(monkeypatch):
    whole = _draws(_sampler(seed=7), 24)
    assert _draws(_sampler(seed=7), 24) == whole and _draws(_sampler(seed=8), 24) != whole
    shards = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        shards.append(_draws(_sampler(seed=7), 12))
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]


def test_a_new_ranking_starts_a_new_round_from_its_easiest_images():
    sampler = _sampler(start_fraction=0.2, growth=1000)  # pools of ceil(8 * ~0.2) = 2
    stream = iter(sampler)
    assert len({next(stream) for _ in range(3)}) == 3  # a round over all 8, under way
    sampler.set_order(easiest_first(SCORES), boundary=1)
    assert {next(stream) for _ in range(6)} == set(EASIEST[:2])


def test_resumed_sampler_continues_the_pacing_from_its_start_iteration():
    sampler = _sampler(start_fraction=0.25, growth=4)
    sampler.set_order(easiest_first(SCORES), boundary=10)
    state = {"order": sampler.order, "boundary": sampler.boundary}
    resumed = _sampler(start_fraction=0.25, growth=4)
    resumed.set_order(state["order"], state["boundary"])
    resumed.set_start_iter(12)  # pool ceil(8 * 0.625) = 5 at iteration 12
    assert resumed.order.tolist() == EASIEST and resumed.boundary == 10
    assert set(_draws(resumed, 5)) == set(EASIEST[:5])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="permutation of the 8 images"):
        _sampler().set_order(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]), 0)
    with pytest.raises(ValueError, match="START_FRACTION must be in"):
        _sampler(start_fraction=0.0)
    with pytest.raises(ValueError, match="training set is empty"):
        CurriculumSampler(0, 2, 0.5, 4, seed=0)


def test_pool_size_is_at_least_one_image():
    sampler = CurriculumSampler(3, 1, 0.01, 10, seed=0)
    sampler.set_order(torch.tensor([2, 0, 1]), 0)
    assert sampler.pool_size(0) == math.ceil(0.03) == 1
    assert set(_draws(sampler, 1)) == {2}


def test_loader_workers_read_a_new_ranking_without_a_restart():
    sampler = _sampler(start_fraction=0.2, growth=10**6)  # pools of ceil(8 * ~0.2) = 2
    dataset = ToIterableDataset(list(range(8)), sampler)
    stream = iter(DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=2))
    assert len({next(stream) for _ in range(8)}) == 8  # before any ranking: every image
    sampler.set_order(easiest_first(SCORES), boundary=0)
    for _ in range(8):  # what the worker prepared before the update (its prefetch, a round's rest)
        next(stream)
    assert {next(stream) for _ in range(20)} == set(EASIEST[:2])

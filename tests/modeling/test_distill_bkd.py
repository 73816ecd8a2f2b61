"""BKD term: class-balanced weights, the re-weighted KL, class counts, deferral; values by plain loops."""
import math
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances

from hkd_d2 import add_hkd_config
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.bkd import BKDDistill, BKDHook, annotation_counts, balanced_kl, class_balanced_weights
from hkd_d2.modeling.recorders import ModelOutputs, RoIOutputs

BETA = 0.9999


def _oracle_weights(counts, beta=BETA):
    raw = [(1 - beta) / (1 - beta ** max(n, 1)) for n in counts]
    return [w / sum(raw) * len(counts) for w in raw]


def _softmax(row, t):
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    return [v / sum(e) for v in e]


def _oracle_kl(student, teacher, weights, t):
    """T^2 * mean over rows of sum_c p~_c log(p~_c / q_c), p~ = w p_t renormalised."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p = [w * v for w, v in zip(weights, _softmax(t_row, t))]
        p = [v / sum(p) for v in p]
        q = _softmax(s_row, t)
        total += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q) if pc > 0)
    return t * t * total / len(student)


def test_weights_are_the_effective_number_formula_summing_to_the_class_count():
    counts = [5000, 300, 12, 0]
    ours = class_balanced_weights(torch.tensor(counts, dtype=torch.float64), BETA)
    assert ours.tolist() == pytest.approx(_oracle_weights(counts), rel=1e-6)
    assert ours.sum().item() == pytest.approx(4.0)
    assert ours[2] > ours[1] > ours[0]  # the rarer, the heavier
    # The reference's weights (train_student.py, "Reweight"), as numbers: equal counts weigh 1.
    assert class_balanced_weights(torch.tensor([7.0, 7.0]), BETA).tolist() == pytest.approx([1.0, 1.0])


def test_balanced_kl_matches_the_formula_and_the_reference_reduction():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g) * 2, torch.randn(5, 3, generator=g) * 2
    w = torch.tensor([2.2, 0.5, 0.3])
    ours = balanced_kl(s, t, w, 2.0).item()
    assert ours == pytest.approx(_oracle_kl(s.tolist(), t.tolist(), w.tolist(), 2.0), rel=1e-5)
    # BKDLoss: kl_div(..., reduction='none').mean(dim=0).sum() * T * T.
    p = torch.softmax(t / 2, dim=1) * w
    p = p / p.sum(1, keepdim=True)
    reference = torch.nn.functional.kl_div(torch.log_softmax(s / 2, dim=1), p, reduction="none").mean(dim=0).sum() * 4
    assert ours == pytest.approx(reference.item(), rel=1e-6)
    assert balanced_kl(s, s, torch.ones(3), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert balanced_kl(torch.zeros(0, 3), torch.zeros(0, 3), w, 2.0).item() == 0.0


def _cfg(**bkd):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    for k, v in bkd.items():
        setattr(cfg.MODEL.DISTILL.BKD, k, v)
    return cfg


def _ctx(student, teacher, gt_classes):
    proposals = []
    for classes in gt_classes:
        inst = Instances((8, 8))
        inst.gt_classes = torch.tensor(classes)
        proposals.append(inst)
    return DistillContext(
        images=ImageList(torch.zeros(1, 3, 8, 8), [(8, 8)]), gt_instances=[], proposals=proposals,
        student=ModelOutputs("student", roi=RoIOutputs(torch.zeros(0), student, torch.zeros(0, 8))),
        teacher=ModelOutputs("teacher", roi=RoIOutputs(torch.zeros(0), teacher, torch.zeros(0, 8))),
    )


SHAPES = {"p2": ShapeSpec(channels=2, stride=4)}
G = torch.Generator().manual_seed(1)
STUDENT, TEACHER = torch.randn(4, 3, generator=G), torch.randn(4, 3, generator=G)


def test_annotation_counts_weigh_foreground_classes_background_one():
    term = BKDDistill(_cfg(WEIGHT=0.5), SHAPES, SHAPES)
    assert term.class_weights().tolist() == [1.0, 1.0, 1.0]  # no counts yet: plain KD
    term.set_class_counts(torch.tensor([900.0, 100.0]))
    fg = _oracle_weights([900, 100])
    assert term.class_weights().tolist() == pytest.approx([*fg, 1.0], rel=1e-6)
    ctx = _ctx(STUDENT, TEACHER, [[0, 1], [2, 2]])
    loss = term(ctx)["loss_bkd"].item()
    # Raw: the distiller multiplies by the weight (alpha), 0.5.
    assert loss == pytest.approx(_oracle_kl(STUDENT.tolist(), TEACHER.tolist(), [*fg, 1.0], 2.0), rel=1e-5)
    assert term.weight == 0.5
    assert ctx.stats["distill/bkd_weight_1"] == pytest.approx(fg[1], rel=1e-6)


def test_sampled_roi_counts_accumulate_background_included():
    term = BKDDistill(_cfg(COUNT="sampled_rois"), SHAPES, SHAPES)
    term(_ctx(STUDENT, TEACHER, [[0, 2], [2, 2]]))
    assert term.class_counts.tolist() == [1.0, 0.0, 3.0]
    ctx = _ctx(STUDENT, TEACHER, [[1, 2], [2, 0]])
    loss = term(ctx)["loss_bkd"].item()
    assert term.class_counts.tolist() == [2.0, 1.0, 5.0]
    weights = _oracle_weights([2, 1, 5])
    assert loss == pytest.approx(_oracle_kl(STUDENT.tolist(), TEACHER.tolist(), weights, 2.0), rel=1e-5)


def test_deferred_reweighting_keeps_weights_one_until_the_hook_switches():
    cfg = _cfg(DEFER_ITER=3)
    term = BKDDistill(cfg, SHAPES, SHAPES)
    term.set_class_counts(torch.tensor([900.0, 100.0]))
    assert term.class_weights().tolist() == [1.0, 1.0, 1.0]
    hook = BKDHook(cfg)
    hook.terms = [term]
    seen = []
    for it in range(5):
        hook.trainer = SimpleNamespace(iter=it)
        hook.before_step()
        seen.append(term.class_weights()[1].item() > 1.0)
    assert seen == [False, False, False, True, True]


def test_hook_counts_non_ignore_annotations_of_the_training_set():
    name = "test_bkd_counts_train"
    records = [
        {"file_name": "a", "annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1, "ignore": 1}]},
        {"file_name": "b", "annotations": [{"category_id": 0}, {"category_id": 0, "iscrowd": 1}]},
    ]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    cfg = _cfg()
    cfg.DATASETS.TRAIN = (name,)
    term = BKDDistill(cfg, SHAPES, SHAPES)
    hook = BKDHook(cfg)
    hook.trainer = SimpleNamespace(model=SimpleNamespace(distill_terms=[term]))
    hook.before_train()
    assert term.class_counts.tolist() == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="category_id 2 in b, but MODEL.ROI_HEADS.NUM_CLASSES is 2"):
        annotation_counts([{"file_name": "b", "annotations": [{"category_id": 2}]}], 2, "x")


def test_unknown_count_source_is_named():
    with pytest.raises(ValueError, match="MODEL.DISTILL.BKD.COUNT 'boxes'"):
        BKDDistill(_cfg(COUNT="boxes"), SHAPES, SHAPES)

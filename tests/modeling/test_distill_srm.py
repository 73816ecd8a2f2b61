"""SRM term: sparse codes (top-k with ties), reconstruction, labels, CE/BCE; values by plain loops."""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList

from hkd_d2 import add_hkd_config
from hkd_d2.modeling.distill import DistillContext
from hkd_d2.modeling.distill.srm import (
    SparseCoder,
    SRMDictionaryHook,
    SRMDistill,
    TeacherCodebook,
    code_matching_losses,
    code_targets,
    keep_top_k,
    learn_dictionaries,
    load_dictionaries,
    reconstruct,
    reconstruction_loss,
    save_dictionaries,
    sparse_codes,
)
from hkd_d2.modeling.recorders import ModelOutputs


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _oracle_codes(x: np.ndarray, d: np.ndarray, b: float, k: int):
    """Per pixel: s = sigmoid(D^T x + b), entries below the k-th largest zeroed (ties kept),
    x_hat = D s. Returns sparse codes (N, K, H, W) and the reconstruction (N, C, H, W)."""
    n, c, h, w = x.shape
    num = d.shape[1]
    codes = np.zeros((n, num, h, w))
    recon = np.zeros_like(x, dtype=np.float64)
    for i in range(n):
        for y in range(h):
            for z in range(w):
                s = [_sigmoid(sum(d[ch, j] * x[i, ch, y, z] for ch in range(c)) + b) for j in range(num)]
                kth = sorted(s, reverse=True)[k - 1]
                for j in range(num):
                    codes[i, j, y, z] = s[j] if s[j] >= kth else 0.0
                for ch in range(c):
                    recon[i, ch, y, z] = sum(d[ch, j] * codes[i, j, y, z] for j in range(num))
    return codes, recon


def _coder(channels, num, seed, trainable=False):
    torch.manual_seed(seed)
    return SparseCoder(channels, num, trainable)


def test_top_k_keeps_ties():
    codes = torch.tensor([0.9, 0.5, 0.5, 0.1, 0.5]).view(1, 5, 1, 1)
    assert keep_top_k(codes, 2).flatten().tolist() == pytest.approx([0.9, 0.5, 0.5, 0.0, 0.5])
    assert keep_top_k(codes, 1).flatten().tolist() == pytest.approx([0.9, 0.0, 0.0, 0.0, 0.0])


def test_sparse_codes_and_reconstruction_match_the_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 3, generator=g)
    coder = _coder(3, 6, seed=1)
    codes, recon = _oracle_codes(x.numpy(), coder.dictionary.numpy(), coder.bias.item(), k=2)
    ours = sparse_codes(coder, x, 2)
    assert ours.numpy() == pytest.approx(codes, abs=1e-6)
    assert (ours > 0).sum(dim=1).min() >= 2
    assert reconstruct(ours, coder.dictionary).numpy() == pytest.approx(recon, abs=1e-5)
    assert reconstruction_loss(coder, x, 2).item() == pytest.approx(((x.numpy() - recon) ** 2).mean(), rel=1e-5)


def test_labels_are_argmax_and_spatial_mean():
    sparse = torch.zeros(1, 3, 1, 2)
    sparse[0, :, 0, 0] = torch.tensor([0.2, 0.0, 0.7])
    sparse[0, :, 0, 1] = torch.tensor([0.6, 0.0, 0.0])
    pixel, image = code_targets(sparse)
    assert pixel.tolist() == [[[2, 0]]]
    assert image.tolist()[0] == pytest.approx([0.4, 0.0, 0.35])


def _oracle_ce(scores, labels):
    """Mean over pixels of -log softmax(scores)[label]; scores (N, K, H, W)."""
    total, count = 0.0, 0
    n, k, h, w = scores.shape
    for i in range(n):
        for y in range(h):
            for z in range(w):
                row = [scores[i, j, y, z] for j in range(k)]
                m = max(row)
                log_sum = m + math.log(sum(math.exp(v - m) for v in row))
                total += log_sum - row[labels[i, y, z]]
                count += 1
    return total / count


def test_ce_on_sigmoid_outputs_as_the_reference_and_on_logits_on_request():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 2, 2, generator=g) * 3
    labels = torch.randint(0, 4, (2, 2, 2), generator=g)
    targets = torch.rand(2, 4, generator=g)
    probs = torch.sigmoid(logits).numpy()
    ce, bce = code_matching_losses(logits, labels, targets)
    assert ce.item() == pytest.approx(_oracle_ce(probs, labels.numpy()), rel=1e-5)
    ce_logits, bce_logits = code_matching_losses(logits, labels, targets, ce_on_logits=True)
    assert ce_logits.item() == pytest.approx(_oracle_ce(logits.numpy(), labels.numpy()), rel=1e-5)
    mean = probs.mean(axis=(2, 3))
    t = targets.numpy()
    expected_bce = float(np.mean(-(t * np.log(mean) + (1 - t) * np.log(1 - mean))))
    assert bce.item() == pytest.approx(expected_bce, rel=1e-5)
    assert bce_logits.item() == pytest.approx(expected_bce, rel=1e-5)


def _cfg(**srm):
    cfg = add_hkd_config(get_cfg())
    cfg.MODEL.DISTILL.SRM.IN_FEATURES = ["p3", "p4"]
    for k, v in srm.items():
        setattr(cfg.MODEL.DISTILL.SRM, k, v)
    return cfg


SHAPES_T = {"p3": ShapeSpec(channels=4, stride=8), "p4": ShapeSpec(channels=4, stride=16)}
SHAPES_S = {"p3": ShapeSpec(channels=2, stride=8), "p4": ShapeSpec(channels=2, stride=16)}


def test_codeword_count_sparsity_and_what_trains():
    term = SRMDistill(_cfg(CODEWORD_MULTIPLIER=4.0, SPARSITY=0.02), SHAPES_S, SHAPES_T)
    # K = 4 * 4 = 16 codewords; int(16 * 0.02) = 0 -> at least 1 code kept.
    assert term.codebook.coders["p3"].dictionary.shape == (4, 16) and term.codebook.k["p3"] == 1
    assert term.student_coders["p3"].dictionary.shape == (2, 16)
    assert TeacherCodebook({"p3": ShapeSpec(channels=64)}, ["p3"], 4.0, 0.02).k["p3"] == 5  # int(256 * 0.02)
    names = {n for n, _ in term.named_parameters()}
    # The student's dictionaries train with the student; the teacher's are buffers (stage 1 only).
    assert names == {f"student_coders.{f}.{p}" for f in ("p3", "p4") for p in ("dictionary", "bias")}
    assert "codebook.coders.p3.dictionary" in term.state_dict() and "codebook.ready" in term.state_dict()


def test_term_sums_levels_raw():
    torch.manual_seed(0)
    term = SRMDistill(_cfg(WEIGHT=0.5, CODEWORD_MULTIPLIER=2.0, SPARSITY=0.25), SHAPES_S, SHAPES_T)
    g = torch.Generator().manual_seed(3)
    student = {"p3": torch.randn(2, 2, 3, 4, generator=g), "p4": torch.randn(2, 2, 2, 2, generator=g)}
    teacher = {"p3": torch.randn(2, 4, 3, 4, generator=g), "p4": torch.randn(2, 4, 2, 2, generator=g)}
    ctx = DistillContext(
        images=ImageList(torch.zeros(2, 3, 24, 32), [(24, 32)] * 2), gt_instances=[], proposals=[],
        student=ModelOutputs("student", features=student), teacher=ModelOutputs("teacher", features=teacher),
    )
    loss = term(ctx)["loss_srm"]
    expected = 0.0
    for f in ("p3", "p4"):
        c = term.codebook.coders[f]
        codes, _ = _oracle_codes(teacher[f].numpy(), c.dictionary.numpy(), c.bias.item(), k=2)  # int(8 * 0.25)
        labels = codes.argmax(axis=1)
        s = term.student_coders[f]
        logits = (torch.einsum("nchw,ck->nkhw", student[f], s.dictionary) + s.bias).detach().numpy()
        probs = 1 / (1 + np.exp(-logits))
        mean, target = probs.mean(axis=(2, 3)), codes.mean(axis=(2, 3))
        expected += _oracle_ce(probs, labels) + np.mean(-(target * np.log(mean) + (1 - target) * np.log(1 - mean)))
    # Raw: the distiller multiplies by the weight, 0.5.
    assert loss.item() == pytest.approx(expected, rel=1e-5) and term.weight == 0.5
    assert ctx.stats["distill/srm_ce"].item() + ctx.stats["distill/srm_bce"].item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert term.student_coders["p3"].dictionary.grad is not None and term.codebook.coders["p3"].dictionary.grad is None


def test_stage_one_lowers_the_reconstruction_error_and_marks_the_codebook_ready():
    torch.manual_seed(0)
    codebook = TeacherCodebook({"p3": ShapeSpec(channels=3)}, ["p3"], 4.0, 0.25)
    g = torch.Generator().manual_seed(5)
    batches = [{"p3": torch.randn(2, 3, 4, 4, generator=g)} for _ in range(4)]
    before = float(sum(reconstruction_loss(codebook.coders["p3"], b["p3"], codebook.k["p3"]) for b in batches))
    losses = learn_dictionaries(iter(batches * 25), codebook, iters=100, lr=1e-2)
    after = float(sum(reconstruction_loss(codebook.coders["p3"], b["p3"], codebook.k["p3"]) for b in batches))
    assert len(losses) == 100 and after < 0.7 * before
    assert bool(codebook.ready)


def test_dictionary_file_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    a = TeacherCodebook(SHAPES_T, ["p3", "p4"], 2.0, 0.1)
    path = tmp_path / "srm.pth"
    save_dictionaries(a, str(path))
    torch.manual_seed(1)
    b = TeacherCodebook(SHAPES_T, ["p3", "p4"], 2.0, 0.1)
    load_dictionaries(b, str(path))
    assert torch.equal(a.coders["p4"].dictionary, b.coders["p4"].dictionary) and bool(b.ready)
    with pytest.raises(FileNotFoundError, match="DICTIONARY_FILE .*absent.pth"):
        load_dictionaries(b, str(tmp_path / "absent.pth"))
    wrong = TeacherCodebook(SHAPES_T, ["p3"], 3.0, 0.1)
    with pytest.raises(ValueError, match="level p3: dictionary \\(4, 8\\), the term needs \\(4, 12\\)"):
        load_dictionaries(wrong, str(path))
    torch.save({"model": {}}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="not an SRM dictionary file"):
        load_dictionaries(b, str(tmp_path / "foreign.pth"))


def test_hook_needs_a_file_or_iterations():
    with pytest.raises(ValueError, match="DICTIONARY_FILE or MODEL.DISTILL.SRM.DICTIONARY_ITERS"):
        SRMDictionaryHook(_cfg(DICTIONARY_ITERS=0))


def test_levels_must_exist_in_both_backbones():
    with pytest.raises(ValueError, match="MODEL.DISTILL.SRM.IN_FEATURES: level 'p4'"):
        SRMDistill(_cfg(), {"p3": SHAPES_S["p3"]}, SHAPES_T)

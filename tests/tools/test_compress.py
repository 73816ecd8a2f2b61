"""hkd-compress: the exact budgeted choice, budgets, the stage interface, block-wise training,
a tiny end-to-end run, and export parity of a compact student."""
import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from hkd_d2.checkpoint import load_detector_weights
from hkd_d2.compress import Budget, InfeasibleBudgetError, Schedule, block_losses, fit_interface, select_blocks, train_blockwise
from hkd_d2.compress.budget import parse_budgets
from hkd_d2.data.synthetic import SyntheticConfig, render_scene
from hkd_d2.deploy import DeployedPredictor
from hkd_d2.engine.setup import load_config
from hkd_d2.export import export_formats
from hkd_d2.tools import compress_report
from hkd_d2.tools.compress import main as compress_main
from hkd_d2.tools.inference import build_predictor

from ..conftest import CONFIGS
from ..hkd_helpers import synthetic_dataset, write_teacher
from .test_deploy import COMPARE_THRESH, RUNTIMES, assert_same_detections

DATASET = "compress_test_train"


# ------------------------------------------------------------------ exact choice under a budget
def _brute_force(losses, params, gmacs, budget, fixed):
    """Smallest summed loss over every combination within ``budget`` (None when none fits)."""
    limit_p, limit_g = budget.limits()
    best = None
    for combo in itertools.product(*(range(len(s)) for s in losses)):
        loss, p, g = 0.0, fixed[0], fixed[1]
        for k, i in enumerate(combo):
            loss, p, g = loss + losses[k][i], p + params[k][i], g + gmacs[k][i]
        if p <= limit_p and g <= limit_g and (best is None or loss < best):
            best = loss
    return best


def _random_stages(rng, stages=4):
    counts = rng.integers(2, 6, stages)
    losses = [rng.uniform(0.0, 1.0, n).tolist() for n in counts]
    params = [rng.integers(1_000, 500_000, n).astype(float).tolist() for n in counts]
    gmacs = [rng.uniform(0.01, 0.8, n).tolist() for n in counts]
    return losses, params, gmacs


@pytest.mark.parametrize("seed", range(6))
def test_selection_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    losses, params, gmacs = _random_stages(rng)
    fixed = (20_000.0, 0.05)
    totals_p = [fixed[0] + sum(c) for c in itertools.product(*params)]
    totals_g = [fixed[1] + sum(c) for c in itertools.product(*gmacs)]
    budgets = [Budget(), Budget(max_params_m=max(totals_p) / 1e6 * 2)]
    for q in (0.1, 0.35, 0.7):
        p, g = np.quantile(totals_p, q) / 1e6, float(np.quantile(totals_g, q))
        budgets += [Budget(max_params_m=p), Budget(max_gmacs=g), Budget(max_params_m=p, max_gmacs=g),
                    Budget(max_params_m=np.quantile(totals_p, 1 - q) / 1e6, max_gmacs=g)]
    checked = 0
    for budget in budgets:
        expected = _brute_force(losses, params, gmacs, budget, fixed)
        if expected is None:
            with pytest.raises(InfeasibleBudgetError, match="No student fits the budget"):
                select_blocks(losses, params, gmacs, budget, fixed)
            continue
        choice = select_blocks(losses, params, gmacs, budget, fixed)
        assert choice.loss == pytest.approx(expected, abs=1e-12), budget
        # The reported totals are those of the chosen indices, and they fit.
        assert choice.loss == pytest.approx(sum(losses[k][i] for k, i in enumerate(choice.indices)))
        assert choice.params == pytest.approx(fixed[0] + sum(params[k][i] for k, i in enumerate(choice.indices)))
        assert choice.gmacs == pytest.approx(fixed[1] + sum(gmacs[k][i] for k, i in enumerate(choice.indices)))
        limit_p, limit_g = budget.limits()
        assert choice.params <= limit_p and choice.gmacs <= limit_g
        checked += 1
    assert checked >= 8


def test_unbounded_budget_takes_the_best_block_of_every_stage():
    losses = [[0.5, 0.2], [0.1, 0.3, 0.4]]
    choice = select_blocks(losses, [[5, 1], [1, 2, 3]], [[1, 1], [1, 1, 1]], Budget())
    assert choice.indices == (1, 0) and choice.loss == pytest.approx(0.3)


def test_infeasible_budget_names_the_cheapest_student():
    with pytest.raises(InfeasibleBudgetError, match=r"0\.000 M parameters and 2\.500 GMACs"):
        select_blocks([[0.1, 0.2]], [[10, 20]], [[2.0, 3.0]], Budget(max_gmacs=1.0), (0.0, 0.5))


def test_parse_budgets():
    budgets = parse_budgets(["1.5", "0.5x"], ["3"], teacher_gmacs=4.0, teacher_params_m=20.0)
    assert budgets == [Budget(3.0, 1.5), Budget(3.0, 2.0)]
    assert [b.label() for b in budgets] == ["gmacs1.5_params3M", "gmacs2_params3M"]
    assert parse_budgets([], ["0.25x"], 4.0, 20.0) == [Budget(5.0, None)]
    with pytest.raises(ValueError, match="--max-params has 2 values: give one, or as many as the other bound \\(3\\)"):
        parse_budgets(["1", "2", "3"], ["1", "2"], 4.0, 20.0)
    with pytest.raises(ValueError, match="--max-gmacs 'lots' is neither a number"):
        parse_budgets(["lots"], [], 4.0, 20.0)
    with pytest.raises(ValueError, match="Budgets repeat"):
        parse_budgets(["0.5x", "2"], [], 4.0, 20.0)


# ------------------------------------------------------------------ interface and training
def test_interface_projects_with_unit_scale_and_decodes_convs_exactly():
    torch.manual_seed(0)
    mixing = torch.randn(12, 12)
    maps = [[torch.randn(2, 8, 8, 8), torch.relu(torch.einsum("ct,nthw->nchw", mixing, torch.randn(2, 12, 6, 6))) * 7,
             torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 2), torch.randn(2, 4, 1, 1)] for _ in range(3)]
    interface = fit_interface(maps, [5, 4, 4, 4])
    assert interface.channels == [8, 5, 4, 4, 4]
    e, d = interface.encoders[1].double(), interface.decoders[1].double()
    projection = d @ e
    assert torch.allclose(projection @ projection, projection, atol=1e-4)  # D E is a projection ...
    assert torch.allclose(projection, projection.T, atol=1e-4)             # ... an orthogonal one
    assert torch.equal(interface.encoders[0], torch.eye(8)) and torch.equal(interface.encoders[4] @ interface.decoders[4],
                                                                          torch.eye(4))
    codes = [interface.encode(batch)[1] for batch in maps]
    assert torch.cat(codes).pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # unit RMS on the fitting maps
    weight = torch.randn(3, 12, 1, 1)
    direct = nn.functional.conv2d(interface.decode([maps[0][0], codes[0]])[1], weight)
    fused = nn.functional.conv2d(codes[0], interface.decode_conv(weight, 1))
    assert torch.allclose(direct, fused, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="Interface res3 of 5 channels: the teacher writes 4"):
        fit_interface(maps, [5, 5, 4, 4])


def _codes(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 6, 6, generator=g)
    return [x, 0.5 * x + 0.1, torch.randn(2, 3, 6, 6, generator=g)]


def _candidates(seed):
    torch.manual_seed(seed)
    return [[nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)], [nn.Conv2d(3, 3, 1)]]


def test_candidates_trained_together_learn_as_if_alone():
    batches = [_codes(s) for s in range(4)]
    together = _candidates(0)
    train_blockwise(together, iter(batches), Schedule(steps=4, lr=0.01, log_period=2))
    for k, i in ((0, 0), (0, 1), (1, 0)):
        alone = _candidates(0)[k][i]
        own = [codes[k:k + 2] for codes in batches]  # its stage's input and target only
        train_blockwise([[alone]], iter(own), Schedule(steps=4, lr=0.01, log_period=2))
        for a, b in zip(alone.parameters(), together[k][i].parameters()):
            assert torch.allclose(a, b, atol=1e-7), (k, i)
    losses = block_losses(together, batches)
    assert len(losses) == 2 and len(losses[0]) == 2 and all(l > 0 for stage in losses for l in stage)


def test_block_loss_is_relative_squared_error():
    x = _codes(0)[0]
    zero = nn.Conv2d(3, 3, 1, bias=False)
    nn.init.zeros_(zero.weight)
    # stage 0 maps x to x exactly; stage 1's candidates: exact, and all-zero output
    assert block_losses([[nn.Identity()], [nn.Identity(), zero]], [[x, x, x]]) == [[0.0], [0.0, 1.0]]


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    with synthetic_dataset(tmp / "data", [DATASET], 6, 96, 64):
        yield tmp


PARAMS_BOUNDS = (0.25, 0.6, 1.2)
GMACS_BOUND = 0.045


@pytest.mark.slow
def test_tiny_compress_run_meets_every_budget(tiny_data):
    teacher = write_teacher(tiny_data, depth=50, norm="GN")
    out = tiny_data / "out"
    report = compress_main([
        "--teacher-config", teacher["MODEL.TEACHER.CONFIG_FILE"], "--teacher-weights", teacher["MODEL.TEACHER.WEIGHTS"],
        "--dataset", DATASET, "--input-size", "64x96", "--out", str(out),
        "--max-params", *map(str, PARAMS_BOUNDS), "--max-gmacs", str(GMACS_BOUND),
        "--steps", "2", "--eval-images", "2", "--pca-batches", "1", "--depths", "1", "--widths", "0.5", "1",
        "--interface-channels", "32", "64", "128", "256", "--latency-repeats", "1", "--compare"])
    table = json.loads((out / "candidates.json").read_text())
    stages = [[c for c in table["candidates"] if c["stage"] == s] for s in ("res2", "res3", "res4", "res5")]
    assert [len(s) for s in stages] == [8, 8, 8, 8]
    fixed = (table["shared"]["params"], table["shared"]["gmacs"])
    losses, params, gmacs = ([[c[key] for c in s] for s in stages] for key in ("block_loss", "params", "gmacs"))
    assert [r["model"] for r in report["rows"]][0] == "teacher" and len(report["selections"]) == 3
    bound_met = []
    for bound, selection in zip(PARAMS_BOUNDS, report["selections"]):
        budget = Budget(bound, GMACS_BOUND)
        folder = out / budget.label()
        assert json.loads((folder / "selection.json").read_text())["summed_block_loss"] == selection["summed_block_loss"]
        measured, predicted = selection["measured"], selection["predicted"]
        assert measured["params"] <= bound * 1e6 and measured["gmacs"] <= GMACS_BOUND
        assert measured["params"] == pytest.approx(predicted["params"], abs=0.5)
        assert measured["gmacs"] == pytest.approx(predicted["gmacs"], rel=1e-9)
        assert selection["summed_block_loss"] == pytest.approx(_brute_force(losses, params, gmacs, budget, fixed))
        bound_met.append(measured["params"] / (bound * 1e6))
        for name in ("student", "hkd"):
            cfg = load_config(str(folder / f"compact_{folder.name}_{name}.yaml"), ["MODEL.DEVICE", "cpu"])
            assert cfg.MODEL.BACKBONE.NAME == "build_compact_fpn_backbone"
            assert cfg.MODEL.WEIGHTS == str(folder / f"{name}_init.pth")
            assert cfg.MODEL.META_ARCHITECTURE == ("Distiller" if name == "hkd" else "GeneralizedRCNN")
        student = build_model(load_config(str(folder / f"compact_{folder.name}_student.yaml"), ["MODEL.DEVICE", "cpu"]))
        load_detector_weights(student, str(folder / "student_init.pth"))
    assert min(bound_met) > 0.3  # the budgets shape the choice (not all met by the cheapest student)
    assert (out / "budget_vs_cost.png").stat().st_size > 0
    text = (out / "report.md").read_text()
    label = Budget(PARAMS_BOUNDS[0], GMACS_BOUND).label()
    assert "| teacher" in text and f"--config-file {out / label}/compact_{label}_hkd.yaml" in text


@pytest.mark.slow
def test_compact_student_exports_with_parity(tmp_path):
    cfg = load_config(str(CONFIGS / "synthetic" / "student_R18_FPN.yaml"), [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_compact_fpn_backbone", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.COMPACT.BLOCKS", "['separable', 'inverted_residual', 'basic', 'bottleneck']",
        "MODEL.COMPACT.DEPTHS", "[1, 2, 1, 1]", "MODEL.COMPACT.WIDTHS", "[16, 32, 64, 32]",
        "INPUT.MIN_SIZE_TEST", "72", "INPUT.MAX_SIZE_TEST", "96"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "student.pth")
    written = export_formats(cfg, str(tmp_path / "student.pth"), str(tmp_path / "export"), ("pytorch", *RUNTIMES))
    pytorch_cfg = cfg.clone()
    pytorch_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = COMPARE_THRESH
    pytorch = build_predictor(pytorch_cfg, written["weights"])
    images = [render_scene(SyntheticConfig(width=96, height=72, scale=5.0), 0, i)[0] for i in range(2)]
    for runtime in RUNTIMES:
        deployed = DeployedPredictor(written[runtime], score_threshold=COMPARE_THRESH)
        scores = [s for image in images for s in assert_same_detections(pytorch, deployed, image)]
        assert scores and all(math.isfinite(s) for s in scores)


def test_impossible_budget_fails_before_training_and_writes_nothing(tiny_data, monkeypatch):
    teacher = write_teacher(tiny_data, depth=18)
    monkeypatch.setattr("hkd_d2.compress.pipeline.train_blockwise", None)  # training would raise TypeError
    out = tiny_data / "impossible"
    args = ["--teacher-config", teacher["MODEL.TEACHER.CONFIG_FILE"], "--teacher-weights", teacher["MODEL.TEACHER.WEIGHTS"],
            "--dataset", DATASET, "--input-size", "64x96", "--out", str(out), "--eval-images", "2", "--pca-batches", "1",
            "--kinds", "separable", "--depths", "1", "--widths", "0.5"]
    with pytest.raises(InfeasibleBudgetError, match="No student fits the budget gmacs0.001"):
        compress_main([*args, "--max-gmacs", "2", "0.001"])
    assert not out.exists()
    out.mkdir()
    with pytest.raises(FileExistsError, match="impossible already exists"):
        compress_main([*args, "--max-gmacs", "2"])


# ------------------------------------------------------------------ budget vs miss rate
def _cost(model, gmacs, budget=None):
    return {"model": model, "budget": budget, "max_gmacs": gmacs if budget else None, "max_params_M": None,
            "params_M": 2 * gmacs, "backbone_params_M": gmacs, "backbone_GMACs": gmacs, "latency": {"median": gmacs / 10}}


def _row(name, config, mr, paired):
    return {"name": name, "config": config, "seeds": [0, 1], "Reasonable": {"mean": mr, "std": 1.0, "n": 2},
            "paired": {ref: {"n": 2, "mean": gain, "ci_low": gain - 1, "ci_high": gain + 1, "wins": 2, "losses": 0,
                             "ties": 0, "verdict": "better" if gain > 1 else "within noise"} for ref, gain in paired.items()}}


def test_budget_vs_mr_joins_costs_and_miss_rates(tmp_path):
    out = tmp_path / "compress"
    report = {"rows": [_cost("teacher", 6.8), _cost("student_R18_FPN", 3.3), _cost("compact gmacs0.68", 0.66, "gmacs0.68"),
                       _cost("compact gmacs1.7", 1.5, "gmacs1.7")]}
    table = {"references": ["alone"], "rows": [
        _row("alone", "configs/t3_1.yaml", 50.0, {}),
        _row("hkd_small", f"{out}/gmacs0.68/compact_hkd.yaml", 60.0, {"alone": -10.0}),
        _row("hkd_big", f"{out}/gmacs1.7/compact_hkd.yaml", 52.0, {"alone": -2.0})]}
    out.mkdir()
    (out / "report.json").write_text(json.dumps(report))
    (tmp_path / "table.json").write_text(json.dumps(table))
    rows = compress_report.main([str(out), str(tmp_path / "table.json"), "--reference", "R18 alone=student_R18_FPN:alone",
                                 "--teacher-mr", "18.5"])
    assert [(r["model"], r["backbone_GMACs"], r["Reasonable"]["mean"]) for r in rows] == [
        ("hkd_small", 0.66, 60.0), ("hkd_big", 1.5, 52.0), ("R18 alone", 3.3, 50.0), ("teacher", 6.8, 18.5)]
    assert rows[0]["paired"]["alone"]["mean"] == -10.0 and rows[2]["paired"] == {}
    text = (out / "budget_vs_mr.md").read_text()
    assert "-10.00 [-11.00, -9.00] 2W/0L, within noise" in text and "60.00 ± 1.00" in text
    assert (out / "budget_vs_mr.png").stat().st_size > 0


def test_budget_vs_mr_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="hkd-compress report not found"):
        compress_report.main([str(tmp_path), str(tmp_path / "t.json")])
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=MODEL:ROW"):
        compress_report.parse_reference("R18 alone")

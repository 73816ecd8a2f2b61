"""hkd-curve: checkpoints found in Detectron2's naming, each evaluated once, grouped, tabulated, drawn."""
import json
from pathlib import Path
from typing import Dict, List

import pytest

from hkd_d2.tools import curve


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_checkpoints_in_training_order_with_completed_iterations(tmp_path):
    touch(tmp_path, "model_0000199.pth", "model_0000099.pth", "model_final.pth", "last_checkpoint", "model_x.pth")
    found = curve.run_checkpoints(tmp_path, max_iter=250)
    assert [(it, p.name) for it, p in found] == [
        (100, "model_0000099.pth"), (200, "model_0000199.pth"), (250, "model_final.pth")]


def test_final_checkpoint_replaces_a_periodic_one_of_the_same_iteration(tmp_path):
    touch(tmp_path, "model_0000399.pth", "model_final.pth")
    assert [p.name for _, p in curve.run_checkpoints(tmp_path, max_iter=400)] == ["model_final.pth"]


@pytest.fixture
def fake_runs(tmp_path, monkeypatch) -> Dict[str, List[str]]:
    """Two runs of config 'a' and one of 'b' in the ablation's OUT/<config>/seed<k> layout; a fake
    evaluation whose MR is the iteration / 10 + the seed, recording every checkpoint it evaluates."""
    for run in ("a/seed0", "a/seed1", "b/seed0"):
        touch(tmp_path / run, "model_0000009.pth", "model_final.pth")
    evaluated: List[str] = []

    class Cfg:
        class SOLVER:
            MAX_ITER = 20

    def evaluate(cfg, checkpoint: Path, output_dir: Path) -> Dict[str, float]:
        evaluated.append(str(checkpoint))
        iteration = 20 if checkpoint.name == "model_final.pth" else 10
        return {"Reasonable": iteration / 10 + int(checkpoint.parent.name[-1]), "All": 50.0}

    monkeypatch.setattr(curve, "_run_config", lambda run_dir: Cfg)
    monkeypatch.setattr(curve, "_evaluate_checkpoint", evaluate)
    return {"root": [str(tmp_path)], "evaluated": evaluated}


def test_each_checkpoint_is_evaluated_once_and_cached(fake_runs):
    run = Path(fake_runs["root"][0]) / "a" / "seed1"
    assert curve.run_curve(run) == {10: {"Reasonable": 2.0, "All": 50.0}, 20: {"Reasonable": 3.0, "All": 50.0}}
    assert len(fake_runs["evaluated"]) == 2
    assert json.loads((run / curve.CURVE_FILE).read_text())["20"]["Reasonable"] == 3.0
    touch(run, "model_0000014.pth")
    assert sorted(curve.run_curve(run)) == [10, 15, 20]
    assert fake_runs["evaluated"][2:] == [str(run / "model_0000014.pth")]


def test_main_groups_runs_by_config_folder(fake_runs):
    root = Path(fake_runs["root"][0])
    out = root / "report" / "curve"
    grouped = curve.main([str(root / r) for r in ("a/seed0", "a/seed1", "b/seed0")] + ["--out", str(out)])
    # a: seeds 0 and 1 -> MR 1, 2 at 10 iterations and 2, 3 at 20; b: seed 0 only
    assert grouped["a"][10]["mean"] == pytest.approx(1.5) and grouped["a"][20]["mean"] == pytest.approx(2.5)
    assert grouped["a"][20]["n"] == 2 and grouped["b"][20] == pytest.approx(
        {"mean": 2.0, "std": 0.0, "min": 2.0, "max": 2.0, "n": 1})
    table = out.with_suffix(".md").read_text().splitlines()
    assert "| 20 " in table[-1] and "2.50 ± 0.71 (n=2)" in table[-1] and "2.00 (n=1)" in table[-1]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["runs"][str(root / "b/seed0")]["label"] == "b"


def test_labels_must_match_the_runs(fake_runs):
    root = Path(fake_runs["root"][0])
    with pytest.raises(SystemExit, match="2 labels for 1 runs"):
        curve.main([str(root / "a/seed0"), "--label", "x", "y"])


def test_a_folder_without_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not the output folder of a training run"):
        curve.run_curve(tmp_path)


def test_undefined_miss_rates_leave_a_gap(tmp_path):
    curves = {"r": {10: {"Reasonable": None}, 20: {"Reasonable": 40.0}}}
    grouped = curve.group_curves(curves, {"r": "x"}, "Reasonable")
    assert grouped["x"][10]["n"] == 0 and grouped["x"][20]["mean"] == 40.0
    assert "n/a (n=0)" in curve.curve_table(grouped)
    assert curve.plot_curves(curves, {"r": "x"}, "Reasonable", tmp_path / "c.png").stat().st_size > 0

"""Fast checks of the tools' library code: tables, statistics, progress, ablation resume, video."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from detectron2.structures import Boxes, Instances

from hkd_d2.tools import ablation, demo, demo_report
from hkd_d2.tools.paired import format_paired, paired_gain
from hkd_d2.tools.complexity import backbone_gmacs, count_parameters
from hkd_d2.tools.progress import StageClock, format_duration
from hkd_d2.tools.runs import teacher_config
from hkd_d2.tools.report import format_mean_spread, gap_closed, markdown_table, mean_and_spread, write_json
from hkd_d2.tools.timing import TimingStats, time_call
from hkd_d2.tools.video import annotate_video, open_video

from ..conftest import CONFIGS


# ------------------------------------------------------------------ report / statistics
def test_mean_and_spread_values():
    stats = mean_and_spread([10.0, 12.0, 14.0, float("nan")])
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(12.0)
    assert stats["std"] == pytest.approx(2.0)
    assert (stats["min"], stats["max"]) == (10.0, 14.0)
    assert mean_and_spread([5.0])["std"] == 0.0
    assert mean_and_spread([])["n"] == 0


def test_format_mean_spread():
    assert format_mean_spread(mean_and_spread([10.0, 12.0, 14.0])) == "12.00 ± 2.00"
    assert format_mean_spread(mean_and_spread([7.125])) == "7.12"
    assert format_mean_spread(mean_and_spread([])) == "n/a"


def test_gap_closed():
    assert gap_closed(teacher=20.0, student=40.0, distilled=30.0) == pytest.approx(0.5)
    assert gap_closed(teacher=20.0, student=40.0, distilled=45.0) == pytest.approx(-0.25)
    assert math.isnan(gap_closed(teacher=40.0, student=30.0, distilled=35.0))


def test_markdown_table_keeps_text_cells():
    text = markdown_table(["Method", "MR"], [["a", "01.50"], ["b", "2.00"]])
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "Method"
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}
    assert "01.50" in lines[2]  # cells are not reparsed as numbers


def test_write_json_atomic_and_nan(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"a": float("nan"), "b": [1.5, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


# ------------------------------------------------------------------ timing / progress
def test_timing_stats_from_samples():
    s = TimingStats.from_samples([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.repeats) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert s.format_ms() == "3000.0 ms [IQR 2000.0-4000.0]"
    with pytest.raises(ValueError):
        TimingStats.from_samples([])


def test_time_call_counts_calls():
    calls = []
    stats = time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and stats.repeats == 4
    assert stats.min <= stats.median <= stats.max


def test_format_duration():
    assert format_duration(3) == "3s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3723) == "1h02m03s"
    assert format_duration(-65) == "-1m05s"


def test_stage_clock_eta_scales_with_observed_speed():
    now = [0.0]
    clock = StageClock({"a": 10.0, "b": 20.0, "c": 30.0}, budget_s=100.0, clock=lambda: now[0], prior_s=0.0)
    assert clock.eta() == pytest.approx(60.0)
    clock.start("a")
    now[0] = 20.0  # stage a took twice its plan
    clock.start("b")
    assert clock.durations() == {"a": 20.0}
    assert clock.eta() == pytest.approx(2 * (20.0 + 30.0))
    banner = clock.banner("b")
    assert "stage 2/3: b" in banner and "elapsed 20s" in banner and "budget left 1m20s" in banner
    now[0] = 30.0
    assert clock.eta() == pytest.approx(2 * 50.0 - 10.0)
    with pytest.raises(KeyError):
        clock.start("unknown")


def test_stage_clock_prior_damps_short_stages():
    now = [0.0]
    clock = StageClock({"a": 10.0, "b": 100.0}, clock=lambda: now[0], prior_s=30.0)
    clock.start("a")
    now[0] = 0.0  # stage a took no time at all
    clock.start("b")
    assert clock.eta() == pytest.approx(100.0 * 30.0 / 40.0)


# ------------------------------------------------------------------ complexity
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.distill_terms = nn.Linear(10, 10)


def test_count_parameters_excludes_distillation_adapters():
    model = _Tiny()
    assert count_parameters(model) == 12
    assert count_parameters(model, exclude_prefixes=()) == 12 + 110


def test_backbone_gmacs_of_a_1x1_conv():
    model = _Tiny().train()
    assert backbone_gmacs(model, 8, 8) == pytest.approx(8 * 8 * 4 * 3 / 1e9)
    assert model.backbone.training  # mode restored


# ------------------------------------------------------------------ ablation runner
def _fake_run_fn(calls):
    def run(config_file, opts, output_dir):
        calls.append((Path(config_file).stem, opts, output_dir))
        seed = int(opts[opts.index("SEED") + 1])
        base = 30.0 if "hkd" in config_file else 40.0
        return {"Reasonable": base + seed, "Reasonable_small": base + 10 + seed, "All": 50.0}
    return run


def _fake_teacher_fn(calls):
    def train_teacher(config_file, opts, output_dir):
        calls.append((config_file, opts, output_dir))
        return str(Path(output_dir) / "model_final.pth")
    return train_teacher


def test_ablation_runs_each_config_and_seed_once_and_resumes(tmp_path):
    configs = ["cfgs/baseline.yaml", "cfgs/hkd.yaml"]
    runs = ablation.plan_runs(configs, 2, tmp_path)
    assert [(r.name, r.seed) for r in runs] == [("baseline", 0), ("baseline", 1), ("hkd", 0), ("hkd", 1)]
    calls, teacher_calls = [], []
    teacher_of = lambda c: "cfgs/teacher.yaml" if "hkd" in c else None  # noqa: E731
    kwargs = dict(run_fn=_fake_run_fn(calls), teacher_fn=_fake_teacher_fn(teacher_calls), teacher_of=teacher_of)
    results = ablation.run_ablation(runs, ["SOLVER.MAX_ITER", "5"], tmp_path, **kwargs)
    assert len(calls) == 4 and len(teacher_calls) == 1
    assert teacher_calls[0][0] == "cfgs/teacher.yaml" and teacher_calls[0][1] == ["SOLVER.MAX_ITER", "5"]
    hkd_opts = calls[2][1]
    assert hkd_opts[hkd_opts.index("MODEL.TEACHER.WEIGHTS") + 1] == str(tmp_path / "teachers" / "teacher" / "model_final.pth")
    assert "MODEL.TEACHER.WEIGHTS" not in calls[0][1]
    assert [r["mr"]["Reasonable"] for r in results] == [40.0, 41.0, 30.0, 31.0]

    # a second invocation finds every result and runs nothing
    opts = ["SOLVER.MAX_ITER", "5"]
    results_again = ablation.run_ablation(runs, opts, tmp_path, **kwargs)
    assert len(calls) == 4 and len(teacher_calls) == 1 and results_again == results
    assert all(r["overrides"] == opts for r in results)

    # ... but not with other overrides: those results would be stale
    with pytest.raises(ValueError, match="another --out"):
        ablation.run_ablation(runs, ["SOLVER.MAX_ITER", "6"], tmp_path, **kwargs)
    assert len(calls) == 4

    # a lost result reruns only that run, with given teacher weights (no teacher training)
    runs[3].result_path.unlink()
    ablation.run_ablation(runs, opts, tmp_path, teacher_weights={"teacher": "given.pth"}, **kwargs)
    assert len(calls) == 5 and calls[-1][0] == "hkd" and len(teacher_calls) == 1
    assert calls[-1][1][calls[-1][1].index("MODEL.TEACHER.WEIGHTS") + 1] == "given.pth"


def test_ablation_trains_each_teacher_once(tmp_path):
    configs = ["a_hkd.yaml", "b_hkd_pyroialign.yaml", "c_hkd.yaml"]
    teacher_of = {"a_hkd.yaml": "t/plain.yaml", "b_hkd_pyroialign.yaml": "t/pyro.yaml", "c_hkd.yaml": "t/plain.yaml"}.get
    calls, teacher_calls = [], []
    ablation.run_ablation(ablation.plan_runs(configs, 1, tmp_path), [], tmp_path, run_fn=_fake_run_fn(calls),
                          teacher_fn=_fake_teacher_fn(teacher_calls), teacher_of=teacher_of)
    assert [c[0] for c in teacher_calls] == ["t/plain.yaml", "t/pyro.yaml"]
    used = [c[1][c[1].index("MODEL.TEACHER.WEIGHTS") + 1] for c in calls]
    assert used == [str(tmp_path / "teachers" / n / "model_final.pth") for n in ("plain", "pyro", "plain")]


@pytest.mark.parametrize("config, teacher", [
    ("synthetic/table3/t3_1_baseline.yaml", None),
    ("synthetic/pretrained/online/pcl.yaml", None),
    ("synthetic/pretrained/online/online_teacher_pd_rd_ld.yaml", None),
    ("synthetic/pretrained/t3_7_pd_rd_ld_pretrained.yaml", "teacher_R50_FPN_pretrained.yaml"),
])
def test_runs_train_only_the_teachers_trained_beforehand(config, teacher):
    found = teacher_config(str(CONFIGS / config))
    assert (found and Path(found).name) == teacher


def test_ablation_names_configs_with_dots_whole():
    assert ablation.parse_comparisons(["pcl_ema_0.99:a/pcl.yaml", "x.yml:y"]) == [("pcl_ema_0.99", "pcl"), ("x", "y")]
    assert ablation.plan_runs(["c/pcl_ema_0.99.yaml"], 1, Path("out"))[0].name == ablation.config_name("pcl_ema_0.99")


def test_parse_teacher_weights(tmp_path):
    (tmp_path / "t.pth").write_bytes(b"x")
    parsed = ablation.parse_teacher_weights([f"teacher_R50_FPN={tmp_path / 't.pth'}", str(tmp_path / "t.pth")])
    assert parsed == {"teacher_R50_FPN": str(tmp_path / "t.pth"), "": str(tmp_path / "t.pth")}
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ablation.parse_teacher_weights([str(tmp_path / "missing.pth")])


def test_ablation_arguments_split_teacher_and_run_overrides():
    args = ablation.parse_args(["--configs", "a.yaml", "--teacher-opts", "SOLVER.MAX_ITER", "800", "--",
                                "SOLVER.MAX_ITER", "150"])
    assert args.teacher_opts == ["SOLVER.MAX_ITER", "800"]
    assert args.opts == ["SOLVER.MAX_ITER", "150"]
    assert ablation.parse_args(["--configs", "a.yaml", "--seeds", "2", "SEED", "1"]).opts == ["SEED", "1"]


def test_ablation_first_seed(tmp_path):
    runs = ablation.plan_runs(["x/a.yaml"], 2, tmp_path, first_seed=3)
    assert [(r.seed, r.output_dir.name) for r in runs] == [(3, "seed3"), (4, "seed4")]
    with pytest.raises(ValueError, match="first-seed"):
        ablation.plan_runs(["x/a.yaml"], 1, tmp_path, first_seed=-1)


def test_ablation_rejects_bad_plans(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        ablation.plan_runs(["a.yaml"], 0, tmp_path)
    with pytest.raises(ValueError, match="differ"):
        ablation.plan_runs(["x/a.yaml", "y/a.yaml"], 1, tmp_path)


def test_ablation_summary_and_table():
    results = [
        {"name": "base", "config": "base.yaml", "seed": s, "mr": {"Reasonable": r, "Reasonable_small": r + 10}}
        for s, r in enumerate([40.0, 42.0, 44.0])
    ] + [{"name": "hkd", "config": "hkd.yaml", "seed": 0, "mr": {"Reasonable": 30.0, "Reasonable_small": 35.0}}]
    rows = ablation.summarize_ablation(results)
    assert [r["name"] for r in rows] == ["base", "hkd"]
    assert rows[0]["Reasonable"]["mean"] == pytest.approx(42.0) and rows[0]["Reasonable"]["std"] == pytest.approx(2.0)
    table = ablation.ablation_table(rows).splitlines()
    assert "42.00 ± 2.00 [40.00-44.00]" in table[2] and "52.00 ± 2.00 [50.00-54.00]" in table[2]
    assert [c.strip() for c in table[3].strip("|").split("|")] == ["hkd", "1", "30.00", "35.00"]


# ------------------------------------------------------------------ paired statistics
def test_paired_gain_on_hand_made_numbers():
    # gains 10-7=3, 12-8=4, 11-6=5, 9-10=-1 (seed 9 only in the reference: left out)
    g = paired_gain({0: 10.0, 1: 12.0, 2: 11.0, 3: 9.0, 9: 50.0}, {0: 7.0, 1: 8.0, 2: 6.0, 3: 10.0})
    assert g["n"] == 4 and [p["seed"] for p in g["per_seed"]] == [0, 1, 2, 3]
    assert g["mean"] == pytest.approx(2.75)
    sd = np.std([3.0, 4.0, 5.0, -1.0], ddof=1)
    assert g["sd"] == pytest.approx(sd)
    half = 3.182446305284263 * sd / 2.0  # t_{0.975, 3}
    assert (g["ci_low"], g["ci_high"]) == (pytest.approx(2.75 - half), pytest.approx(2.75 + half))
    assert (g["wins"], g["losses"], g["ties"]) == (3, 1, 0)
    assert g["verdict"] == "within noise"  # the interval contains 0
    assert format_paired(g) == f"+2.75 [{2.75 - half:+.2f}, {2.75 + half:+.2f}] 3W/1L"


def test_paired_gain_verdicts():
    better = paired_gain({s: 50.0 + s for s in range(5)}, {s: 45.0 + s + 0.1 * (s % 2) for s in range(5)})
    assert better["verdict"] == "better" and better["ci_low"] > 0 and better["wins"] == 5
    worse = paired_gain({s: 45.0 + 0.1 * s for s in range(3)}, {s: 50.0 for s in range(3)})
    assert worse["verdict"] == "worse" and worse["losses"] == 3
    one = paired_gain({0: 50.0}, {0: 40.0})
    assert one["mean"] == 10.0 and math.isnan(one["ci_low"]) and one["verdict"] == "within noise"
    assert format_paired(one) == "+10.00 1W/0L"
    assert format_paired(paired_gain({0: 1.0}, {1: 2.0})) == "n/a"


def test_ablation_paired_columns_and_comparisons():
    mr = {"base": [40.0, 44.0, 42.0], "pyro": [46.0, 45.0, 47.0], "hkd": [35.0, 41.0, 38.0]}
    results = [{"name": n, "config": f"{n}.yaml", "seed": s, "mr": {"Reasonable": v, "Reasonable_small": v}}
               for n, vals in mr.items() for s, v in enumerate(vals)]
    rows = ablation.summarize_ablation(results)
    comparisons = ablation.paired_comparisons(results, rows, ["base", "pyro"], [("hkd", "pyro")])
    hkd = rows[2]["paired"]
    assert hkd["base"]["mean"] == pytest.approx(4.0) and hkd["base"]["wins"] == 3  # gains 5, 3, 4
    assert hkd["pyro"]["mean"] == pytest.approx(8.0)  # gains 11, 4, 9
    assert "base" not in rows[0]["paired"] and rows[0]["paired"]["pyro"]["mean"] == pytest.approx(4.0)  # gains 6, 1, 5
    assert comparisons[0]["candidate"] == "hkd" and comparisons[0]["mean"] == pytest.approx(8.0)
    table = ablation.ablation_table(rows, ["base", "pyro"]).splitlines()
    assert "Gain vs base" in table[0] and "Gain vs pyro" in table[0]
    cells = [c.strip() for c in table[4].strip("|").split("|")]
    assert cells[0] == "hkd" and cells[4].startswith("+4.00 [") and cells[4].endswith("3W/0L")
    assert [c.strip() for c in table[2].strip("|").split("|")][4] == "-"  # base vs itself
    assert "within noise" in ablation.comparison_table(comparisons) or "better" in ablation.comparison_table(comparisons)
    with pytest.raises(ValueError, match="missing"):
        ablation.paired_comparisons(results, rows, ["missing"])


def test_parse_comparisons():
    assert ablation.parse_comparisons(["configs/x/t3_3_ld.yaml:t3_1_baseline"]) == [("t3_3_ld", "t3_1_baseline")]
    with pytest.raises(ValueError, match="CANDIDATE:REFERENCE"):
        ablation.parse_comparisons(["t3_3_ld"])


# ------------------------------------------------------------------ demo report
def _mr(r: float, small: float, heavy: float, all_: float) -> dict:
    return {"Reasonable": r, "Reasonable_small": small, "Reasonable_occ=heavy": heavy, "All": all_}


def test_demo_table_gap_and_best_student():
    lvl, pyr = demo_report.student_kind("t3_1_baseline"), demo_report.student_kind("t3_2_pyroialign")
    mr = {
        "teacher": [_mr(20.0, 30.0, 60.0, 40.0)],
        lvl: [_mr(40.0, 50.0, 70.0, 60.0)] * 2,
        pyr: [_mr(44.0, 55.0, 75.0, 65.0)] * 2,
        "hkd": [_mr(30.0, 45.0, 80.0, 50.0), _mr(34.0, 45.0, 80.0, 50.0)],
    }
    summary = demo_report.summarize(mr)
    assert demo_report.best_student(summary) == lvl
    gaps = demo_report.gap_table(summary, lvl)
    assert gaps["Reasonable"] == pytest.approx((40 - 32) / 20)
    assert gaps["Reasonable_small"] == pytest.approx(0.25)
    assert gaps["Reasonable_occ=heavy"] == pytest.approx(-1.0)
    figures = {k: {"params_M": p, "backbone_GMACs": g, "latency_ms": t, "pooler": pool}
               for k, p, g, t, pool in (("teacher", 41.3, 80.0, 2500.0, "PyRoIAlign"), (lvl, 20.1, 40.0, 1200.0, "LevelROIPooler"),
                                        (pyr, 20.2, 40.0, 1250.0, "PyRoIAlign"), ("hkd", 20.2, 40.0, 1210.0, "PyRoIAlign"))}
    lines = demo_report.table1(summary, figures, (600, 800)).splitlines()
    assert "Backbone GMACs @600x800" in lines[0] and "MR Small (%)" in lines[0]
    assert "Student R18-FPN alone (LevelROIPooler)" in lines[3] and "Student R18-FPN alone (PyRoIAlign)" in lines[4]
    assert "Student R18-FPN + HKD" in lines[5] and "32.00 ± 2.83" in lines[5] and "1210" in lines[5]


def test_demo_paired_summary_and_report():
    lvl, pyr = demo_report.student_kind("a"), demo_report.student_kind("b")
    by_seed = {lvl: {0: _mr(40.0, 0, 0, 0), 1: _mr(44.0, 0, 0, 0)},
               pyr: {0: _mr(50.0, 0, 0, 0), 1: _mr(52.0, 0, 0, 0)},
               "hkd": {0: _mr(30.0, 0, 0, 0), 1: _mr(45.0, 0, 0, 0)}}
    paired = demo_report.paired_summary(by_seed, lvl)
    assert paired["best_student"] == lvl
    assert [p["gain"] for p in paired["vs_best"]["per_seed"]] == [10.0, -1.0]
    assert paired["vs"][pyr]["mean"] == pytest.approx(13.5)
    args = demo.parse_args(["--seeds", "0", "1", "--student-configs", "x/a.yaml", "x/b.yaml"])
    mr = {"teacher": [_mr(20.0, 20.0, 20.0, 20.0)], lvl: [_mr(42.0, 42.0, 42.0, 42.0)],
          pyr: [_mr(51.0, 51.0, 51.0, 51.0)], "hkd": [_mr(37.5, 37.5, 37.5, 37.5)]}
    summary = demo_report.summarize(mr)
    figures = {k: {"params_M": 1.0, "backbone_GMACs": 2.0, "latency_ms": 3.0, "pooler": "P"} for k in mr}
    per_seed = [{"seed": 0, "student": 40.0, "hkd": 30.0, "students": {lvl: 40.0, pyr: 50.0}},
                {"seed": 1, "student": 44.0, "hkd": 45.0, "students": {lvl: 44.0, pyr: 52.0}}]
    environment = {"torch": "2.4.1", "torch_threads": 1, "cpu": "Fake CPU", "cpu_cores": 2, "device": "cpu"}
    text = demo_report.render_report(args, summary, figures, demo_report.gap_table(summary, lvl), per_seed, paired,
                                     {"teacher": 65.0}, 70.0, environment)
    flat = " ".join(text.split())  # table cells are padded
    assert "+4.50 [" in flat and "1W/1L" in flat and "verdict: **within noise**" in flat
    assert "verdict, depend on it): torch 2.4.1, 1 torch thread, CPU Fake CPU (2 cores), device cpu." in flat
    assert "| Reasonable | 20% |" in flat
    assert "| teacher | 1m05s |" in flat and "| total | 1m10s |" in flat
    assert "| 1 | 44.00 | 52.00 | 45.00 | -1.00 | no |" in flat


def test_demo_checks_its_configs_before_training(tmp_path):
    demo.check_configs(demo.parse_args([]))
    with pytest.raises(FileNotFoundError, match="--student-configs"):
        demo.check_configs(demo.parse_args(["--student-configs", str(tmp_path / "missing.yaml")]))
    with pytest.raises(ValueError, match="distinct"):
        demo.check_configs(demo.parse_args(["--student-configs", "configs/synthetic/table3/t3_1_baseline.yaml",
                                            "configs/synthetic/table3/t3_1_baseline.yaml"]))
    with pytest.raises(ValueError, match="distills from no teacher"):
        demo.check_configs(demo.parse_args(["--hkd-config", "configs/synthetic/student_R18_FPN.yaml"]))


def test_demo_stage_plan_covers_every_run():
    args = demo.parse_args(["--seeds", "0", "1", "--teacher-iters", "10", "--student-iters", "5",
                            "--student-configs", "a/x.yaml", "a/y.yaml"])
    plan = demo._stage_plan(args)
    assert list(plan) == ["data", "teacher", "student:x seed 0", "student:y seed 0", "hkd seed 0",
                          "student:x seed 1", "student:y seed 1", "hkd seed 1", "complexity", "report"]
    assert plan["teacher"] > plan["student:x seed 0"] > 0


# ------------------------------------------------------------------ video
def _write_video(path: Path, frames: int, size=(64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    writer.release()


class _StubPredictor:
    def __init__(self):
        self.calls = 0

    def __call__(self, frame):
        self.calls += 1
        h, w = frame.shape[:2]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 20.0, 40.0], [30.0, 5.0, 40.0, 30.0]]))
        inst.scores = torch.tensor([0.9, 0.2])
        inst.pred_classes = torch.zeros(2, dtype=torch.int64)
        return {"instances": inst}


def test_annotate_video_writes_frames_and_fps(tmp_path):
    src, dst = tmp_path / "in.avi", tmp_path / "out" / "annotated.avi"
    _write_video(src, 5)
    predictor = _StubPredictor()
    figures = annotate_video(predictor, str(src), str(dst), max_frames=4)
    assert predictor.calls == 4 and figures["frames"] == 4
    assert figures["detections_per_frame"] == 1.0 and figures["size"] == [48, 64]
    assert figures["detector_fps"] > 0 and figures["end_to_end_fps"] > 0
    capture = cv2.VideoCapture(str(dst))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (48, 64, 3)
    assert json.loads(Path(f"{dst}.json").read_text())["frames"] == 4
    assert sorted(p.name for p in dst.parent.iterdir()) == ["annotated.avi", "annotated.avi.json"]


def test_video_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        open_video(str(tmp_path / "missing.avi"))
    bad = tmp_path / "notavideo.avi"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="notavideo.avi"):
        open_video(str(bad))
    src = tmp_path / "in.avi"
    _write_video(src, 2)
    with pytest.raises(ValueError, match="suffix"):
        annotate_video(_StubPredictor(), str(src), str(tmp_path / "out.gif"))
    assert not (tmp_path / "out.gif").exists()


def test_demo_shows_the_image_with_most_pedestrians():
    from hkd_d2.tools.demo import busiest_image

    records = [
        {"file_name": "a.png", "annotations": [{"ignore": 0}, {"ignore": 1}, {"ignore": 1}]},
        {"file_name": "b.png", "annotations": [{"ignore": 0}, {"ignore": 0}]},
        {"file_name": "c.png", "annotations": []},
    ]
    assert busiest_image(records) == "b.png"


def test_ablation_report_only_uses_finished_runs(tmp_path):
    for name, values in (("a", [40.0, 44.0]), ("b", [35.0, 41.0])):
        for seed, v in enumerate(values):
            write_json(tmp_path / name / f"seed{seed}" / "result.json",
                       {"config": f"{name}.yaml", "name": name, "seed": seed, "overrides": ["K", "1"],
                        "mr": {"Reasonable": v, "Reasonable_small": v}})
    rows = ablation.main(["--configs", "x/a.yaml", "x/b.yaml", "--seeds", "3", "--out", str(tmp_path),
                          "--report-only", "--compare", "b:a", "--", "K", "1"])
    assert [len(r["seeds"]) for r in rows] == [2, 2]  # seed 2 was never run: left out, nothing trained
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["references"] == ["a"] and table["comparisons"][0]["mean"] == pytest.approx(4.0)
    assert "Gain vs a" in (tmp_path / "table.md").read_text()
    with pytest.raises(ValueError, match="overrides"):
        ablation.main(["--configs", "x/a.yaml", "--seeds", "2", "--out", str(tmp_path), "--report-only", "--", "K", "2"])


def test_ablation_report_only_leaves_out_comparisons_of_rows_not_run_yet(tmp_path):
    for seed, (a, b) in enumerate(((40.0, 35.0), (44.0, 41.0))):
        for name, v in (("a", a), ("b", b)):
            write_json(tmp_path / name / f"seed{seed}" / "result.json",
                       {"config": f"{name}.yaml", "name": name, "seed": seed, "overrides": [],
                        "mr": {"Reasonable": v, "Reasonable_small": v}})
    ablation.main(["--configs", "x/a.yaml", "x/b.yaml", "x/c.yaml", "--seeds", "2", "--out", str(tmp_path),
                   "--report-only", "--reference", "a", "c", "--compare", "b:a", "c:a", "c:b"])
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["references"] == ["a"]
    assert [(c["candidate"], c["reference"], c["mean"]) for c in table["comparisons"]] == [("b", "a", 4.0)]


def test_demo_trains_and_tests_at_its_input_scale():
    opts = demo._run_opts(demo.parse_args(["--input-scale", "0.8"]), iters=100, seed=3)
    keys = dict(zip(opts[::2], opts[1::2]))
    assert keys["INPUT.MIN_SIZE_TRAIN"] == "(192,)" and keys["INPUT.MAX_SIZE_TRAIN"] == "256"
    assert keys["INPUT.MIN_SIZE_TEST"] == "192" and keys["INPUT.MAX_SIZE_TEST"] == "256"
    assert demo.input_size(demo.parse_args(["--input-scale", "1", "--image-size", "200", "300"])) == (200, 300)


def test_demo_run_folders_name_built_in_data_sets_when_the_data_are_the_built_in_ones():
    """Tools run on a demo run folder in another process find its data under the built-in names."""
    assert demo.dataset_names(demo.parse_args([])) == ("synthetic_citypersons_train", "synthetic_citypersons_val")
    for other in (["--num-train", "8"], ["--image-size", "64", "96"], ["--data", "elsewhere"]):
        assert demo.dataset_names(demo.parse_args(other)) == demo.DEMO_SETS

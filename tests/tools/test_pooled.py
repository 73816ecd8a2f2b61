"""Numeric environment records and the pooling of paired verdicts across environments (hand-made numbers)."""
import json
import os

import pytest
import torch

from hkd_d2.tools import ablation, pooled
from hkd_d2.tools.demo_report import student_kind
from hkd_d2.tools.environment import cpu_model, describe_device, format_environment, numeric_environment
from hkd_d2.tools.paired import paired_gain
from hkd_d2.tools.report import write_json

ENV_A = {"torch": "2.4.1", "torch_threads": 1, "cpu": "Fake CPU A", "cpu_cores": 2, "device": "cpu", "python": "3.11.0"}
ENV_B = {**ENV_A, "torch_threads": 4, "cpu": "Fake CPU B", "cpu_cores": 8}
# Per seed: (MR of the best student alone, MR of the distilled student); gains = differences.
GAINS_A = [2.0, 3.0, 4.0, 5.0, 1.0]  # 5W/0L, mean 3, interval above 0
GAINS_B = [2.0, -1.0, 3.0, 4.0, 1.0]  # 4W/1L (80%), mean 1.8, interval across 0


# ------------------------------------------------------------------ environment
def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: Fake\nmodel name\t: Fake CPU 9000 @ 1.00GHz\nflags\t\t: a:b\n")
    assert cpu_model(str(info)) == "Fake CPU 9000 @ 1.00GHz"
    (tmp_path / "arm").write_text("processor\t: 0\nModel\t\t: Raspberry Pi 4\n")
    assert cpu_model(str(tmp_path / "arm")) == "Raspberry Pi 4"
    assert cpu_model(str(tmp_path / "absent"))  # platform's answer, never empty


def test_numeric_environment_is_this_process():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = numeric_environment("cpu")
    finally:
        torch.set_num_threads(threads)
    assert env["torch_threads"] == 1 and env["torch"] == torch.__version__
    assert env["cpu_cores"] == os.cpu_count() and env["device"] == "cpu" and env["cpu"]
    assert numeric_environment(["cpu", "cpu"])["device"] == "cpu + cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_cuda_without_a_gpu_is_reported_as_the_cpu_fallback():
    assert describe_device("cuda") == "cpu (cuda requested, no GPU)"


def test_format_environment():
    assert format_environment(ENV_A) == "torch 2.4.1, 1 torch thread, CPU Fake CPU A (2 cores), device cpu"
    assert format_environment(ENV_B).startswith("torch 2.4.1, 4 torch threads, CPU Fake CPU B (8 cores)")
    assert format_environment(None) == "not recorded"


# ------------------------------------------------------------------ ablation records
def test_ablation_runs_record_their_environment_and_the_table_names_it(tmp_path):
    for name, values in (("a", [40.0, 44.0]), ("b", [35.0, 41.0])):
        for seed, v in enumerate(values):
            write_json(tmp_path / name / f"seed{seed}" / "result.json",
                       {"config": f"{name}.yaml", "name": name, "seed": seed, "overrides": [],
                        "mr": {"Reasonable": v, "Reasonable_small": v}, "environment": ENV_A})
    ablation.main(["--configs", "x/a.yaml", "x/b.yaml", "--seeds", "2", "--out", str(tmp_path), "--report-only"])
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["environment"] == ENV_A and table["environments"][0]["runs"] == ["a seed 0", "a seed 1", "b seed 0", "b seed 1"]
    assert f"Numeric environment of the runs: {format_environment(ENV_A)}." in (tmp_path / "table.md").read_text()

    # a run made elsewhere: the table says the pairs mix environments
    write_json(tmp_path / "b" / "seed1" / "result.json",
               {"config": "b.yaml", "name": "b", "seed": 1, "overrides": [], "mr": {"Reasonable": 41.0}, "environment": ENV_B})
    ablation.main(["--configs", "x/a.yaml", "x/b.yaml", "--seeds", "2", "--out", str(tmp_path), "--report-only"])
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["environment"] is None and [g["runs"] for g in table["environments"]] == [
        ["a seed 0", "a seed 1", "b seed 0"], ["b seed 1"]]
    assert "made in 2 numeric environments" in (tmp_path / "table.md").read_text()


def test_new_ablation_results_carry_the_environment_of_their_device(tmp_path):
    runs = ablation.plan_runs(["c/a.yaml"], 1, tmp_path)
    results = ablation.run_ablation(runs, ["MODEL.DEVICE", "cpu"], tmp_path, run_fn=lambda c, o, d: {"Reasonable": 1.0},
                                    teacher_of=lambda c: None)
    env = results[0]["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] == torch.get_num_threads()
    assert ablation.run_device(["SEED", "1", "MODEL.DEVICE", "cuda:1"]) == "cuda:1"
    assert ablation.run_device(["SEED", "1"]) == ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ pooling
def _demo_report(path, gains, environment, reference=40.0):
    best, other = student_kind("t3_1_baseline"), student_kind("t3_2_pyroialign")
    students = {s: reference for s in range(len(gains))}
    hkd = {s: reference - g for s, g in enumerate(gains)}
    vs = {best: paired_gain(students, hkd), other: paired_gain({s: v + 10 for s, v in students.items()}, hkd)}
    write_json(path, {"paired": {"best_student": best, "vs_best": vs[best], "vs": vs}, "environment": environment})
    return str(path)


def _ablation_table(path, gains, environment):
    runs = [{"name": name, "seed": s, "mr": {"Reasonable": 40.0 - (g if name == "hkd" else 0.0)}, "environment": environment}
            for name in ("alone", "hkd") for s, g in enumerate(gains)]
    write_json(path, {"rows": [{"name": "alone"}, {"name": "hkd"}], "runs": runs,
                      "comparisons": [{"candidate": "hkd", "reference": "alone"}],
                      "environment": environment, "environments": ablation.run_environments(runs)})
    return str(path)


def test_each_environment_and_the_pooled_pairs(tmp_path):
    files = [_demo_report(tmp_path / "a.json", GAINS_A, ENV_A), _demo_report(tmp_path / "b.json", GAINS_B, ENV_B)]
    result = pooled.main([*files, "--out", str(tmp_path / "out")])
    a, b = result["environments"]
    assert a["mean"] == pytest.approx(3.0) and (a["wins"], a["losses"]) == (5, 0)
    assert a["ci_low"] == pytest.approx(3.0 - 2.776445 * 1.581139 / 5 ** 0.5, abs=1e-5)
    assert a["won_fraction"] == 1.0 and a["verdict"] == "better" and a["meets_bar"]
    assert b["mean"] == pytest.approx(1.8) and b["won_fraction"] == pytest.approx(0.8)
    assert b["ci_low"] < 0 and b["verdict"] == "within noise" and not b["meets_bar"]
    p = result["pooled"]
    assert p["n"] == 10 and p["mean"] == pytest.approx(2.4) and p["won_fraction"] == pytest.approx(0.9)
    assert p["ci_low"] == pytest.approx(2.4 - 2.262157 * 1.776388 / 10 ** 0.5, abs=1e-5) and p["verdict"] == "better"
    assert not result["bar_met"] and result["shared_environments"] == []
    text = " ".join((tmp_path / "out" / "pooled.md").read_text().split())
    assert "**not met** (failing: 2)" in text and "Fake CPU B (8 cores)" in text and "| 80% | within noise | no |" in text
    assert json.loads((tmp_path / "out" / "pooled.json").read_text())["pooled"]["n"] == 10


def test_the_bar_is_met_when_every_environment_passes(tmp_path):
    files = [_demo_report(tmp_path / "a.json", GAINS_A, ENV_A),
             _ablation_table(tmp_path / "t.json", [g + 1 for g in GAINS_A], ENV_B)]
    result = pooled.main(files)
    assert result["bar_met"] and [r["candidate"] for r in result["environments"]] == ["hkd", "hkd"]
    assert result["environments"][1]["mean"] == pytest.approx(4.0)
    # a third environment that loses one seed of five fails a bar of 100% of the seeds
    assert not pooled.main([*files, _demo_report(tmp_path / "c.json", GAINS_B, None), "--win-fraction", "1"])["bar_met"]


def test_demo_reference_choice_and_shared_environments(tmp_path):
    files = [_demo_report(tmp_path / "a.json", GAINS_A, ENV_A), _demo_report(tmp_path / "b.json", GAINS_A, ENV_A)]
    result = pooled.main([*files, "--reference", "t3_2_pyroialign"])
    assert result["environments"][0]["mean"] == pytest.approx(13.0)  # the other student alone is 10 points worse
    assert result["shared_environments"] == [files]
    with pytest.raises(ValueError, match="--reference nope: no such student alone.*t3_1_baseline"):
        pooled.main([files[0], "--reference", "nope"])


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Result file not found: .*absent.json"):
        pooled.main([str(tmp_path / "absent.json")])
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="other.json: neither a demo report.json nor an ablation table"):
        pooled.main([str(other)])
    table = _ablation_table(tmp_path / "t.json", GAINS_A, ENV_A)
    with pytest.raises(ValueError, match="t.json: no runs of nope"):
        pooled.main([table, "--pair", "hkd:nope"])
    with pytest.raises(ValueError, match="--pair"):
        pooled.main([_demo_report(tmp_path / "a.json", GAINS_A, ENV_A), "--pair", "hkd:alone"])
    data = json.loads((tmp_path / "t.json").read_text())
    data["environments"] = ablation.run_environments([{**r, "environment": ENV_B if r["seed"] else ENV_A}
                                                      for r in data["runs"]])
    write_json(tmp_path / "mixed.json", data)
    with pytest.raises(ValueError, match="mixed.json: its runs were made in 2 numeric environments"):
        pooled.main([str(tmp_path / "mixed.json")])
    with pytest.raises(ValueError, match="--win-fraction"):
        pooled.main([table, "--win-fraction", "0"])


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: Expecting property name"):
        pooled.main([str(tmp_path / "broken.json")])
    write_json(tmp_path / "old.json", {"paired": {"vs_best": {}}})
    with pytest.raises(ValueError, match="old.json: no entry 'best_student'"):
        pooled.main([str(tmp_path / "old.json")])

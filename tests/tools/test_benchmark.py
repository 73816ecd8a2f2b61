"""The benchmark (latency, stage profiles, training cost), its fixed work for random detectors,
and the deploy-time runtime settings. Tiny inputs, no timing assertions."""
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d

from hkd_d2.config import add_hkd_config
from hkd_d2.deploy import ALLOW_SPINNING_ENTRY, DeployedPredictor, RuntimeOptions, load_runtime, onnx_session_options
from hkd_d2.tools import benchmark
from hkd_d2.tools.benchmark import BASELINE, STUDENT, TEACHER, recipe_detectors
from hkd_d2.tools.fixed_work import FIXED_WORK_OPTS, trained_like_weights, work_counts
from hkd_d2.tools.inference import build_predictor
from hkd_d2.tools.stage_profile import (INFERENCE_STAGES, OTHER, exclusive_stages, mean_profile, onnx_stage,
                                       summarise_onnx_profile)
from hkd_d2.tools.timing import time_interleaved

# Tiny detectors: 64x96 inputs (512 anchors over P2-P6), few proposals.
SIZE = (64, 96)
TINY = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.RPN.POST_NMS_TOPK_TEST", "40",
        "TEST.DETECTIONS_PER_IMAGE", "30"]
TINY_ARGS = ["--sizes", "64x96", "--opts", *TINY, "--repeats", "1", "--warmup", "0", "--calib-images", "1"]
STAGES = {*INFERENCE_STAGES, OTHER, "total"}


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, *SIZE), generator=torch.Generator().manual_seed(seed)).float()


@pytest.fixture(scope="module")
def tiny_recipe():
    """CityPersons' teacher and student (fixed work, tiny) with trained-like random weights."""
    detectors = recipe_detectors("citypersons", "cpu", True, TINY, [["MODEL.RPN.POST_NMS_TOPK_TEST", "20"]])
    models = {}
    for name, cfg in ((TEACHER, detectors.teacher), (STUDENT, detectors.students[BASELINE])):
        torch.manual_seed(0)
        models[name] = trained_like_weights(build_predictor(cfg).model, [{"image": _image()}])
    return detectors, models


@pytest.fixture(scope="module")
def exported(tiny_recipe, tmp_path_factory):
    """The tiny student exported (TorchScript, ONNX fp32)."""
    detectors, models = tiny_recipe
    return benchmark._export(detectors.students[BASELINE], models[STUDENT], tmp_path_factory.mktemp("export"),
                             ["torchscript", "onnx"], 1)


# ------------------------------------------------------------------ fixed work
def test_fixed_work_gives_teacher_and_student_equal_box_counts(tiny_recipe):
    _, models = tiny_recipe
    inputs = [{"image": _image(1)}]
    counts = {name: work_counts(model, inputs) for name, model in models.items()}
    # Every proposal kept (40 of 512 candidates) and every detection slot filled.
    assert counts[TEACHER] == counts[STUDENT] == {"proposals": 40, "detections": 30}


def test_fixed_work_config_keeps_every_box(tiny_recipe):
    detectors, _ = tiny_recipe
    for cfg in (detectors.teacher, detectors.students[BASELINE]):
        assert cfg.MODEL.RPN.NMS_THRESH == 1.0
        assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 1.0
        assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == -1.0
    assert dict(zip(FIXED_WORK_OPTS[::2], FIXED_WORK_OPTS[1::2]))["MODEL.RPN.NMS_THRESH"] == "1.0"


def test_trained_like_weights_bound_activations_and_make_biases_distinct(tiny_recipe):
    _, models = tiny_recipe
    teacher = models[TEACHER]
    with torch.no_grad():
        features = teacher.backbone(teacher.preprocess_image([{"image": _image(2)}]).tensor)
    # Random R50 features grow by orders of magnitude with identity FrozenBatchNorm; measured statistics keep them small.
    assert max(float(f.abs().max()) for f in features.values()) < 100
    biases = [m.bias for m in teacher.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None]
    assert all(float(b.abs().min()) > 0 for b in biases)
    assert len({tuple(b.flatten()[:4].tolist()) for b in biases}) == len(biases)
    norms = [m for m in teacher.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms and all(float(m.running_var.min()) > 0 for m in norms)


def test_deploy_opts_change_only_their_student_variant(tiny_recipe):
    detectors, _ = tiny_recipe
    label = "POST_NMS_TOPK_TEST=20"
    assert list(detectors.students) == [BASELINE, label]
    assert detectors.students[label].MODEL.RPN.POST_NMS_TOPK_TEST == 20
    assert detectors.students[BASELINE].MODEL.RPN.POST_NMS_TOPK_TEST == 40
    assert detectors.teacher.MODEL.RPN.POST_NMS_TOPK_TEST == 40


# ------------------------------------------------------------------ deploy-time runtime settings
def test_runtime_options_defaults_are_the_runtimes_own():
    cfg = add_hkd_config(get_cfg())
    assert RuntimeOptions.from_config(cfg) == RuntimeOptions()
    default = onnx_session_options(RuntimeOptions())
    import onnxruntime as ort

    plain = ort.SessionOptions()
    assert default.graph_optimization_level == plain.graph_optimization_level
    assert default.intra_op_num_threads == plain.intra_op_num_threads


def test_runtime_options_from_config_and_session_options():
    import onnxruntime as ort

    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_list(["EXPORT.RUNTIME.GRAPH_OPTIMIZATION_LEVEL", "basic", "EXPORT.RUNTIME.INTRA_OP_THREADS", "3",
                         "EXPORT.RUNTIME.ALLOW_SPINNING", "False", "EXPORT.RUNTIME.TORCHSCRIPT_FREEZE", "True"])
    options = RuntimeOptions.from_config(cfg)
    assert options == RuntimeOptions("basic", 3, False, True)
    session_options = onnx_session_options(options)
    assert session_options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert session_options.intra_op_num_threads == 3
    assert session_options.get_session_config_entry(ALLOW_SPINNING_ENTRY) == "0"
    with pytest.raises(ValueError, match="GRAPH_OPTIMIZATION_LEVEL"):
        RuntimeOptions(graph_optimization_level="fastest")
    with pytest.raises(ValueError, match="INTRA_OP_THREADS"):
        RuntimeOptions(intra_op_threads=-1)


def _detections(path: str, options: RuntimeOptions):
    out = DeployedPredictor(path, score_threshold=-1.0, options=options).model([{"image": _image(3)}])[0]["instances"]
    return out.pred_boxes.tensor, out.scores


@pytest.mark.parametrize("options", [
    RuntimeOptions(graph_optimization_level="disable"),
    RuntimeOptions(graph_optimization_level="basic"),
    RuntimeOptions(intra_op_threads=1),
    RuntimeOptions(allow_spinning=False),
])
def test_onnx_session_options_keep_outputs(exported, options):
    boxes, scores = _detections(exported["onnx"], RuntimeOptions())
    boxes_o, scores_o = _detections(exported["onnx"], options)
    assert len(boxes) == 30
    torch.testing.assert_close(boxes_o, boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores_o, scores, rtol=0, atol=1e-4)


def test_torchscript_freeze_keeps_outputs(exported, monkeypatch):
    frozen = []
    freeze = torch.jit.freeze
    monkeypatch.setattr(torch.jit, "freeze", lambda module: frozen.append(module) or freeze(module))
    boxes, scores = _detections(exported["torchscript"], RuntimeOptions())
    assert not frozen
    boxes_f, scores_f = _detections(exported["torchscript"], RuntimeOptions(torchscript_freeze=True))
    assert len(frozen) == 1 and isinstance(frozen[0], torch.jit.ScriptModule)
    torch.testing.assert_close(boxes_f, boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores_f, scores, rtol=0, atol=1e-4)


def test_load_runtime_default_options(exported):
    run, meta = load_runtime(exported["onnx"])
    boxes, scores, classes = run(_image(3))
    assert meta.format == "onnx" and boxes.shape == (30, 4) and scores.shape == classes.shape == (30,)


# ------------------------------------------------------------------ timing and stage profiles
def test_time_interleaved_alternates_calls():
    calls = []
    stats = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(stats) == {"a", "b"} and stats["a"].repeats == 3
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, repeats=0)


def test_exclusive_stages_subtract_nested_ranges():
    ranges = {"total": 100.0, "preprocess": 1.0, "backbone+FPN": 50.0, "backbone": 30.0, "RPN": 12.0,
              "RPN head": 10.0, "RoI pooling": 15.0, "RoI level fusion": 5.0, "box head FCs": 8.0,
              "box predictor": 1.0, "post-processing": 3.0}
    stages = exclusive_stages(ranges, INFERENCE_STAGES)
    assert stages["FPN"] == 20.0 and stages["RPN proposals"] == 2.0 and stages["RoI pooling"] == 10.0
    assert stages["box head"] == 9.0
    assert stages[OTHER] == pytest.approx(100.0 - (1 + 30 + 20 + 10 + 2 + 10 + 5 + 9 + 3))
    assert stages["total"] == 100.0


def test_mean_profile_averages_rounds():
    rounds = [{"stages": {"a": 1.0, "total": 3.0}, "ranges": {"r": 2.0}, "top_ops": [{"op": "conv", "self_ms": 2.0}]},
              {"stages": {"a": 3.0, "total": 5.0}, "ranges": {"r": 4.0},
               "top_ops": [{"op": "conv", "self_ms": 4.0}, {"op": "nms", "self_ms": 8.0}]}]
    mean = mean_profile(rounds)
    assert mean["stages"] == {"a": 2.0, "total": 4.0} and mean["ranges"] == {"r": 3.0}
    assert mean["top_ops"] == [{"op": "nms", "self_ms": 4.0}, {"op": "conv", "self_ms": 3.0}]


def test_onnx_stage_by_node_name():
    assert onnx_stage("/backbone/bottom_up/res2/res2.0/conv1/Conv", "preprocess") == "backbone"
    assert onnx_stage("/backbone/fpn_output2/Conv_output_0_QuantizeLinear", "backbone") == "FPN"
    assert onnx_stage("fused /roi_heads/box_head/fc1/Gemm", "RoI pooling") == "box head"
    assert onnx_stage("/roi_heads/box_pooler/fuse/Conv", "RoI pooling") == "RoI level fusion"
    assert onnx_stage("/roi_heads/Gather_3", "box head") == "post-processing"
    assert onnx_stage("NonMaxSuppression_2110", "RPN proposals") == "RPN proposals"


def _event(name: str, op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_summarise_onnx_profile(tmp_path):
    runs = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 100} for t in (0, 1000, 2000)]
    nodes = []
    for t in (0, 1000, 2000):
        nodes += [_event("/Sub", "Sub", t + 1, 2), _event("/backbone/bottom_up/stem/Conv", "Conv", t + 5, 40 if t else 90),
                  _event("/proposal_generator/rpn_head/conv/Conv", "Conv", t + 50, 20),
                  _event("/proposal_generator/TopK", "TopK", t + 72, 2),
                  _event("If_6", "If", t + 74, 12),  # holds the NMS, reported on its own too
                  _event("NonMaxSuppression_7", "NonMaxSuppression", t + 75, 10)]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(runs + nodes))
    summary = summarise_onnx_profile(str(trace))
    stages = summary["stages"]
    # The first run (warm-up, a slower backbone) is left out; times are ms per run.
    assert stages["backbone"] == pytest.approx(0.040)
    assert stages["preprocess"] == pytest.approx(0.002)
    assert stages["RPN head"] == pytest.approx(0.020)
    # The unnamed NMS joins the stage of the node before it.
    assert stages["RPN proposals"] == pytest.approx(0.012)
    assert stages["total"] == pytest.approx(0.100)
    assert stages[OTHER] == pytest.approx(0.100 - 0.074)
    assert summary["top_ops"][0] == {"op": "Conv", "self_ms": pytest.approx(0.060)}


# ------------------------------------------------------------------ the command
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_benchmark_latency_and_profile(tmp_path):
    out = tmp_path / "bench"
    result = benchmark.main(["--out", str(out), "--recipes", "caltech", "citypersons", *TINY_ARGS, "--profile",
                             "--profile-runs", "1", "--deploy-opts", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
                             "--deploy-opts", "EXPORT.RUNTIME.ALLOW_SPINNING", "False"])
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["latency"] == json.loads(json.dumps(result["latency"]))
    rows = saved["latency"]
    names = [r["name"] for r in rows]
    runtimes = ["PyTorch", "TorchScript", "ONNX Runtime fp32", "ONNX Runtime int8"]
    assert names == ([f"{TEACHER}, PyTorch"] + [f"{STUDENT}, {r}" for r in runtimes]
                     + [f"{STUDENT}, {r}, POST_NMS_TOPK_TEST=20" for r in runtimes]
                     + [f"{STUDENT}, {r}, ALLOW_SPINNING=False" for r in runtimes[1:]])
    assert {r["recipe"] for r in rows} == {"caltech"} and saved["same_as"] == {"citypersons 64x96": "caltech 64x96"}
    for r in rows:
        assert r["size"] == list(SIZE) and r["latency"]["repeats"] == 1 and r["latency"]["median"] > 0
        assert r["detections"] == (20 if "POST_NMS_TOPK_TEST=20" in r["name"] else 30)
    assert [r["proposals"] for r in rows if r["runtime"] == "pytorch"] == [40, 40, 20]
    assert rows[0]["latency_over_teacher"] == 1.0
    spinning = [r for r in rows if "ALLOW_SPINNING" in r["name"] and r["runtime"] == "onnx"][0]
    assert spinning["runtime_options"]["allow_spinning"] is False
    profiles = saved["profiles"]
    assert len(profiles) == 9  # PyTorch and ONNX Runtime rows; TorchScript has no stage profile
    for p in profiles:
        assert set(p["stages"]) == STAGES and p["stages"]["total"] > 0 and p["top_ops"]
        assert p["stages"]["RoI pooling"] > 0
    md = (out / "benchmark.md").read_text()
    for text in ("## Inference latency (cpu", "## Stage profiles (cpu)", "Latency / teacher", "fixed work",
                 "citypersons 64x96: the detectors of caltech 64x96"):
        assert text in md


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_benchmark_training_mode(tmp_path):
    out = tmp_path / "train"
    # The CPU-sized synthetic recipe (the real ones run the same code at a larger cost).
    result = benchmark.main(["--out", str(out), "--training", "--train-config", "synthetic/hkd_R50_to_R18.yaml",
                             "--train-size", "64x128", "--repeats", "1", "--profile", "--profile-runs", "1"])
    cost = result["training"][0]
    for kind in ("student", "teacher", "hkd"):
        assert cost[kind]["time"]["repeats"] == 1 and cost[kind]["time"]["median"] > 0
        assert np.isfinite(cost[kind]["peak_memory_MB"]) and cost[kind]["process_peak_memory_MB"] > 0
    assert cost["hkd"]["profile"]["stages"]["distillation terms"] > 0
    assert cost["teacher"]["profile"]["stages"]["teacher backbone+FPN"] > 0
    assert cost["student"]["profile"]["stages"]["backward"] > 0
    median = {k: cost[k]["time"]["median"] for k in ("student", "teacher", "hkd")}
    assert cost["hkd_over_student_plus_teacher"] == pytest.approx(median["hkd"] / (median["student"] + median["teacher"]))
    assert cost["size"] == [64, 128] and cost["batch"] == 1
    md = (out / "benchmark.md").read_text()
    assert "HKD step / (student step + teacher forward)" in md and "HKD - (student + teacher)" in md

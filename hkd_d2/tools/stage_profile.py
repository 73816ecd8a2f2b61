"""Where a detector's time goes, stage by stage.

* PyTorch: :func:`torch_stage_profile` runs a model under ``torch.profiler`` with one
  ``record_function`` range around each stage's module or method (:data:`INFERENCE_RANGES`, or
  any ranges, e.g. a training step's), and turns the ranges' times into exclusive stage times;
* ONNX Runtime: :func:`onnx_stage_profile` runs an exported graph with ONNX Runtime's profiler and
  assigns every node to a stage by its name: ``torch.onnx.export`` names nodes after the module
  that emitted them (``/backbone/bottom_up/res2/...``), and ONNX Runtime's fused nodes and int8
  quantize/dequantize nodes keep such a name. A node without one (a layout reorder or transpose
  ONNX Runtime inserted, an NMS the exporter left unnamed) joins the stage of the node run before
  it (ONNX Runtime's default sequential executor runs them in graph order).

Inference stages (:data:`INFERENCE_STAGES`): preprocess (normalise, pad), backbone (ResNet), FPN,
RPN head (its convolutions), RPN proposals (anchors, box decoding, top-k, NMS), RoI pooling
(RoIAlign), RoI level fusion (PyRoIAlign's 1x1 convolution over the levels; none for a
single-level pooler), box head (FC layers and predictor), post-processing (box decoding, score
threshold, NMS, top-k), and other: the rest (resizing the output, glue; for ONNX Runtime, its
time outside the graph nodes).
"""
import json
import os
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..deploy import GRAPH_INPUT, RuntimeOptions, onnx_session

__all__ = [
    "INFERENCE_RANGES",
    "INFERENCE_STAGES",
    "StageTimes",
    "stage_ranges",
    "torch_stage_profile",
    "mean_profile",
    "onnx_stage_profile",
]

# Range label -> (submodule path, attribute) of a GeneralizedRCNN timed in inference.
INFERENCE_RANGES: Dict[str, Tuple[str, str]] = {
    "total": ("", "forward"),
    "preprocess": ("", "preprocess_image"),
    "backbone+FPN": ("backbone", "forward"),
    "backbone": ("backbone.bottom_up", "forward"),
    "RPN": ("proposal_generator", "forward"),
    "RPN head": ("proposal_generator.rpn_head", "forward"),
    "RoI pooling": ("roi_heads.box_pooler", "forward"),
    "RoI level fusion": ("roi_heads.box_pooler.fuse", "forward"),
    "box head FCs": ("roi_heads.box_head", "forward"),
    "box predictor": ("roi_heads.box_predictor", "forward"),
    "post-processing": ("roi_heads.box_predictor", "inference"),
}
# Stage -> (range it is, ranges nested in it that it leaves out); "other" = total - the stages.
INFERENCE_STAGES: Dict[str, Tuple[Sequence[str], Sequence[str]]] = {
    "preprocess": (["preprocess"], []),
    "backbone": (["backbone"], []),
    "FPN": (["backbone+FPN"], ["backbone"]),
    "RPN head": (["RPN head"], []),
    "RPN proposals": (["RPN"], ["RPN head"]),
    "RoI pooling": (["RoI pooling"], ["RoI level fusion"]),
    "RoI level fusion": (["RoI level fusion"], []),
    "box head": (["box head FCs", "box predictor"], []),
    "post-processing": (["post-processing"], []),
}
# ONNX node name prefix -> stage, most specific first (names follow the exported module tree).
ONNX_STAGE_PREFIXES: Sequence[Tuple[str, str]] = (
    ("/backbone/bottom_up/", "backbone"),
    ("/backbone/", "FPN"),
    ("/proposal_generator/rpn_head/", "RPN head"),
    ("/proposal_generator/", "RPN proposals"),
    ("/roi_heads/box_pooler/fuse/", "RoI level fusion"),
    ("/roi_heads/box_pooler/", "RoI pooling"),
    ("/roi_heads/box_head/", "box head"),
    ("/roi_heads/box_predictor/", "box head"),
    ("/roi_heads/", "post-processing"),
)
OTHER = "other"
# What ONNX Runtime puts before the name of a node it fused from others.
FUSED_PREFIX = "fused "
# Control-flow nodes: ONNX Runtime reports the nodes of their subgraphs on their own too, so their
# times are left out (counted once, in those nodes).
CONTAINER_OPS = ("If", "Loop", "Scan")
# Operators listed per profile (by their own time, largest first).
TOP_OPS = 12

# Stage -> milliseconds per run.
StageTimes = Dict[str, float]


def _shadow(obj: object, attr: str, label: str, device: torch.device) -> Callable[[], None]:
    """Replace ``obj.attr`` (on the instance) by a wrapper that runs it in a ``record_function``
    range named ``label``; return the function that restores it."""
    original = getattr(obj, attr)
    shadowed = attr in vars(obj)

    def ranged(*args, **kwargs):
        with torch.profiler.record_function(label):
            out = original(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

    setattr(obj, attr, ranged)

    def restore():
        if shadowed:
            setattr(obj, attr, original)
        else:
            delattr(obj, attr)

    return restore


def _resolve(model: nn.Module, path: str) -> Optional[object]:
    """``model.<path>`` (dotted attributes: submodules, list indices, properties), or None."""
    obj: Optional[object] = model
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
    return obj


@contextmanager
def stage_ranges(model: nn.Module, ranges: Mapping[str, Tuple[str, str]], device: torch.device) -> Iterator[None]:
    """Within the block, each ``label: (attribute path, method)`` of ``ranges`` runs in a
    ``torch.profiler.record_function(label)`` range (CUDA synchronised at its end). Ranges whose
    object or method ``model`` lacks are left out."""
    with ExitStack() as stack:
        for label, (path, attr) in ranges.items():
            obj = _resolve(model, path)
            if callable(getattr(obj, attr, None)):
                stack.callback(_shadow(obj, attr, label, device))
        yield


def _range_ms(profile, runs: int) -> Dict[str, float]:
    """Milliseconds per run of every event of a profile, by name (inclusive times)."""
    return {e.key: e.cpu_time_total / 1e3 / runs for e in profile.key_averages()}


def exclusive_stages(
    range_ms: Mapping[str, float], stages: Mapping[str, Tuple[Sequence[str], Sequence[str]]], total: str = "total"
) -> StageTimes:
    """Stage times from inclusive range times: each stage sums its ranges less the nested ones
    it leaves out; ``other`` is ``total`` less every stage."""
    times = {
        stage: sum(range_ms.get(r, 0.0) for r in inside) - sum(range_ms.get(r, 0.0) for r in nested)
        for stage, (inside, nested) in stages.items()
    }
    times[OTHER] = range_ms.get(total, 0.0) - sum(times.values())
    times[total] = range_ms.get(total, 0.0)
    return times


def _top_ops(profile, runs: int) -> List[Dict]:
    events = [e for e in profile.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / runs, "calls": e.count // runs}
            for e in events[:TOP_OPS]]


def torch_stage_profile(
    model: nn.Module, step: Callable[[], object], runs: int, device: torch.device,
    ranges: Mapping[str, Tuple[str, str]] = INFERENCE_RANGES,
    stages: Mapping[str, Tuple[Sequence[str], Sequence[str]]] = INFERENCE_STAGES,
    total: str = "total",
    warmup: int = 1,
) -> Dict:
    """Profile ``runs`` calls of ``step`` (after ``warmup`` untimed) with ``ranges`` on ``model``.

    ``step`` may open ranges of its own (e.g. ``backward``, or the ``total`` range of all).
    Returns ``{"stages": StageTimes, "ranges": inclusive ms per run of every range, "top_ops":
    operators by own time}``; stage times are CPU wall times of the ranges (on CUDA each range
    ends synchronised).
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with stage_ranges(model, ranges, device):
        for _ in range(warmup):
            step()
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(runs):
                step()
    range_ms = _range_ms(profile, runs)
    labels = {total, *ranges} | {r for inside, nested in stages.values() for r in (*inside, *nested)}
    return {
        "stages": exclusive_stages(range_ms, stages, total),
        "ranges": {k: v for k, v in range_ms.items() if k in labels},
        "top_ops": _top_ops(profile, runs),
    }


def mean_profile(profiles: Sequence[Dict]) -> Dict:
    """The mean of several :func:`torch_stage_profile` results (e.g. one per round of
    interleaved runs): stage and range times, and operators' own times, averaged."""
    n = len(profiles)
    mean = {key: {name: sum(p[key].get(name, 0.0) for p in profiles) / n
                  for name in dict.fromkeys(k for p in profiles for k in p[key])}
            for key in ("stages", "ranges")}
    ops: Dict[str, float] = defaultdict(float)
    for p in profiles:
        for op in p["top_ops"]:
            ops[op["op"]] += op["self_ms"] / n
    top = sorted(ops.items(), key=lambda kv: kv[1], reverse=True)[:TOP_OPS]
    return {**mean, "top_ops": [{"op": op, "self_ms": ms} for op, ms in top]}


def onnx_stage(node_name: str, previous: str) -> str:
    """The stage of an ONNX Runtime node from its name (:data:`ONNX_STAGE_PREFIXES`); a node
    without a module name gets ``previous``, the stage of the node run before it."""
    if node_name.startswith(FUSED_PREFIX):
        node_name = node_name[len(FUSED_PREFIX):]
    for prefix, stage in ONNX_STAGE_PREFIXES:
        if node_name.startswith(prefix):
            return stage
    return previous


def _onnx_events(trace_file: str) -> Tuple[List[Dict], List[Dict]]:
    """The ``model_run`` events and the node kernel events (less :data:`CONTAINER_OPS`) of an
    ONNX Runtime profile."""
    with open(trace_file) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e.get("args", {}).get("op_name") not in CONTAINER_OPS]
    return runs, nodes


def summarise_onnx_profile(trace_file: str, skip_runs: int = 1) -> Dict:
    """Per-stage and per-operator milliseconds per run of an ONNX Runtime profile (JSON trace),
    leaving out the first ``skip_runs`` runs (warm-up)."""
    runs, nodes = _onnx_events(trace_file)
    timed = runs[skip_runs:]
    if not timed:
        raise ValueError(f"{trace_file} holds {len(runs)} runs; at least {skip_runs + 1} are needed")
    stages: Dict[str, float] = defaultdict(float)
    ops: Dict[str, float] = defaultdict(float)
    for run in timed:
        stage = "preprocess"
        inside = (e for e in nodes if run["ts"] <= e["ts"] <= run["ts"] + run["dur"])
        for e in sorted(inside, key=lambda e: e["ts"]):
            stage = onnx_stage(e["name"][: -len("_kernel_time")], stage)
            stages[stage] += e["dur"] / 1e3 / len(timed)
            ops[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / len(timed)
    result = {stage: stages.get(stage, 0.0) for stage in (*INFERENCE_STAGES, OTHER)}
    result["total"] = sum(e["dur"] for e in timed) / 1e3 / len(timed)
    # The rest of a run (between kernels: ONNX Runtime's own work, thread hand-offs) counts as other.
    result[OTHER] += result["total"] - sum(stages.values())
    top = sorted(ops.items(), key=lambda kv: kv[1], reverse=True)[:TOP_OPS]
    return {"stages": result, "top_ops": [{"op": op, "self_ms": ms} for op, ms in top]}


def onnx_stage_profile(path: str, image: np.ndarray, runs: int, options: Optional[RuntimeOptions] = None,
                       device: str = "cpu", trace_dir: Optional[str] = None) -> Dict:
    """Profile ``runs`` ONNX Runtime runs (after one untimed) of the graph ``path`` on ``image``
    (the graph input, ``(3, H, W)`` float32), with the session set up by ``options``. The JSON
    trace is written under ``trace_dir`` (default: next to ``path``) and named in the result."""
    prefix = os.path.join(trace_dir or os.path.dirname(os.path.abspath(path)), os.path.basename(path) + ".profile")
    session = onnx_session(path, device, options, profile_prefix=prefix)
    feed = {GRAPH_INPUT: np.ascontiguousarray(image, dtype=np.float32)}
    for _ in range(runs + 1):
        session.run(None, feed)
    trace = session.end_profiling()
    return {**summarise_onnx_profile(trace), "trace": trace}

"""Benchmark: teacher vs deployed student on the benchmarks' recipes: latency, stage profiles, HKD training cost.

Latency (the default): for each recipe (``configs/<recipe>/hkd_R50_to_R18.yaml``: its teacher
R50-FPN, and its student R18-FPN as exported) and each input size (``600x800``, the paper's Table 4
size, and ``native``, the recipe's ``MIN_SIZE_TEST x MAX_SIZE_TEST``), batch 1:

* the teacher in PyTorch, the student in PyTorch, TorchScript, ONNX Runtime fp32 and ONNX Runtime
  int8 (``hkd_d2.export``; int8 calibrated on generated scenes), all built from random weights;
* timed in the same run, interleaved (one call of each per round, ``--repeats`` rounds after
  ``--warmup``): median, IQR, min-max, and the ratio to the teacher of the same round set;
* on every device: CPU with ``--threads`` threads (PyTorch and ONNX Runtime alike), and CUDA when
  present (PyTorch and TorchScript; ONNX Runtime with its CUDA provider where installed);
* with fixed work (``--fixed-work``, the default; :mod:`hkd_d2.tools.fixed_work`): teacher and
  student run the box head on the same number of proposals and return the same number of
  detections (both counted in every row), as trained detectors would;
* ``--deploy-opts KEY VALUE ...`` (repeatable): deploy-time settings (e.g.
  ``MODEL.RPN.POST_NMS_TOPK_TEST 300``, ``EXPORT.RUNTIME.ALLOW_SPINNING False``,
  ``EXPORT.RUNTIME.TORCHSCRIPT_FREEZE True``), each occurrence applied to one more copy of every
  student row (same weights, exported again), timed in the same rounds.

``--recipes synthetic`` times the demo's CPU-sized detectors (``configs/synthetic``) the same way.

A recipe whose detectors and size equal an earlier one's (Caltech and ECP at 600x800 are
CityPersons' detectors) is measured once and listed as the same.

``--profile``: per-stage tables (:mod:`hkd_d2.tools.stage_profile`): ``torch.profiler`` on the
PyTorch teacher and student, ONNX Runtime's profiler on the fp32 and int8 graphs.

``--training``: the HKD step's cost instead (:mod:`hkd_d2.tools.training_cost`): student step,
teacher no-grad forward, HKD step of ``--train-config`` at ``--train-size`` (default: its training
size), peak memory, and ``HKD / (student + teacher)``; with ``--profile``, by stage.

Output: ``OUT/benchmark.json`` and ``OUT/benchmark.md`` (with the command, date, machine and
threads); ONNX Runtime profiles under ``OUT/profiles/``.
"""
import argparse
import dataclasses
import datetime
import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger
from torch import nn

from ..data.synthetic import SyntheticConfig, render_scene
from ..deploy import DeployedPredictor, RuntimeOptions
from ..engine.setup import load_config
from ..export import export_formats, student_config
from ..model_zoo import get_config_file
from .complexity import backbone_gmacs, count_parameters
from .environment import format_environment, numeric_environment
from .fixed_work import FIXED_WORK_OPTS, trained_like_weights, work_counts
from .inference import build_predictor, model_inputs
from .report import markdown_table, write_json, write_text
from .runs import teacher_config
from .stage_profile import INFERENCE_STAGES, OTHER, onnx_stage_profile, torch_stage_profile
from .timing import time_interleaved
from .training_cost import training_cost, training_markdown

__all__ = ["parse_args", "run_benchmark", "main"]

logger = logging.getLogger("hkd_d2.benchmark")

RECIPES = ("caltech", "citypersons", "crowdhuman", "ecp")
# The CPU-sized detectors of the demo (64-channel FPN, few proposals, 128-wide box head): on request.
CPU_SIZED = "synthetic"
# The distillation recipe of a benchmark: its teacher, and the student that is exported.
RECIPE_CONFIG = "{}/hkd_R50_to_R18.yaml"
NATIVE = "native"
TEACHER, STUDENT = "teacher R50-FPN", "student R18-FPN"
# Student runtimes: name -> label; the exported ones are artifacts of hkd_d2.export.export_formats.
RUNTIMES = {
    "pytorch": "PyTorch",
    "torchscript": "TorchScript",
    "onnx": "ONNX Runtime fp32",
    "onnx_int8": "ONNX Runtime int8",
}
EXPORTED = ("torchscript", "onnx", "onnx_int8")
# Variant labels: the student as the recipe has it, and with --deploy-opts.
# Variant of the student as its recipe has it (the others are named by their --deploy-opts).
BASELINE = "recipe"
# Size of the generated scenes the int8 student is calibrated on (the config's test size where that
# is smaller: an exported graph keeps its traced per-image proposal count, which smaller images
# may not reach); the FrozenBatchNorm statistics of fixed work are measured on the first scene.
CALIBRATION_SIZE = (600, 800)
# Timed image: generated scene (split 1, index 0), resized to each input size.
TIMED_SCENE = (1, 0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_output", help="output folder")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="only this device (default: cpu, and cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch and ONNX Runtime (default: PyTorch's, e.g. OMP_NUM_THREADS)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES + (CPU_SIZED,),
                   help=f"benchmarks' recipes ('{CPU_SIZED}': the demo's CPU-sized detectors)")
    p.add_argument("--sizes", nargs="+", default=["600x800", NATIVE],
                   help=f"input sizes HxW, or '{NATIVE}' (the recipe's MIN_SIZE_TEST x MAX_SIZE_TEST)")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES), help="student runtimes")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (each runs every detector once)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed rounds first (TorchScript specialises its graph over its first two calls)")
    p.add_argument("--fixed-work", action=argparse.BooleanOptionalAction, default=True,
                   help="teacher and student do the same work (fixed proposal and detection counts)")
    p.add_argument("--deploy-opts", nargs="+", action="append", default=[], metavar="KEY VALUE",
                   help="deploy-time config overrides of one more set of student rows (repeatable)")
    p.add_argument("--calib-images", type=int, default=8, help="generated scenes the int8 student is calibrated on")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides of every detector (e.g. smaller INPUT sizes for a quick check)")
    p.add_argument("--profile", action="store_true", help="also write per-stage profiles")
    p.add_argument("--profile-runs", type=int, default=3, help="profiled runs per detector (after one untimed)")
    p.add_argument("--training", action="store_true", help="measure the HKD training step's cost instead")
    p.add_argument("--train-config", default=RECIPE_CONFIG.format("citypersons"),
                   help="distillation config of --training (model zoo name or file)")
    p.add_argument("--train-size", default=None, help="training image size HxW (default: the config's training size)")
    p.add_argument("--train-batch", type=int, default=1, help="images per training step")
    args = p.parse_args(argv)
    if any(len(opts) % 2 for opts in (args.opts, *args.deploy_opts)):
        p.error("--deploy-opts and --opts take KEY VALUE pairs")
    return args


def parse_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"Size {text!r} is not HxW (e.g. 600x800) or '{NATIVE}'") from None
    return h, w


def _config_file(name: str) -> str:
    """A model-zoo config name (``citypersons/hkd_R50_to_R18.yaml``) or a config file path."""
    return name if Path(name).is_file() else get_config_file(name)


def deploy_label(opts: Sequence[str]) -> str:
    """A variant's name from its overrides: ``POST_NMS_TOPK_TEST=300, ALLOW_SPINNING=False``."""
    return ", ".join(f"{key.split('.')[-1]}={value}" for key, value in zip(opts[::2], opts[1::2]))


@dataclass
class Detectors:
    """One recipe's configs on one device: the teacher, and the student per variant (BASELINE
    first, then one per ``--deploy-opts``)."""

    recipe: str
    teacher: CfgNode
    students: Dict[str, CfgNode]

    @property
    def native(self) -> Tuple[int, int]:
        cfg = self.students[BASELINE]
        return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST

    def key(self) -> str:
        """What decides the measured work: model, test and export keys of every detector."""
        return "\n".join(c.MODEL.dump() + c.TEST.dump() + c.EXPORT.dump() for c in (self.teacher, *self.students.values()))


def recipe_detectors(recipe: str, device: str, fixed_work: bool, opts: Sequence[str],
                     deploy_opts: Sequence[Sequence[str]] = ()) -> Detectors:
    """Configs of ``recipe``'s teacher and exported student (and the student with each of
    ``deploy_opts``)."""
    config_file = get_config_file(RECIPE_CONFIG.format(recipe))
    common = (list(FIXED_WORK_OPTS) if fixed_work else []) + list(opts) + ["MODEL.DEVICE", device]
    student = student_config(load_config(config_file, common))
    students = {BASELINE: student}
    for overrides in deploy_opts:
        deployed = student.clone()
        deployed.merge_from_list(list(overrides))
        students[deploy_label(overrides)] = deployed
    return Detectors(recipe, load_config(teacher_config(config_file), common), students)


def _scene(index: Tuple[int, int]) -> np.ndarray:
    return render_scene(SyntheticConfig(), *index)[0]


def _detector(cfg: CfgNode, fixed_work: bool) -> nn.Module:
    """``cfg``'s detector in eval mode, random weights (trained-like ones with fixed work)."""
    torch.manual_seed(0)
    model = build_predictor(cfg).model
    if fixed_work:
        trained_like_weights(model, model_inputs(_scene((0, 0)), *CALIBRATION_SIZE))
    return model


def _calibration(cfg: CfgNode, count: int) -> Callable[[], List[np.ndarray]]:
    test_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    size = min(CALIBRATION_SIZE, test_size, key=lambda hw: hw[0] * hw[1])

    def images():
        return [model_inputs(_scene((0, i)), *size)[0]["image"].float().numpy() for i in range(count)]

    return images


def _export(cfg: CfgNode, model: nn.Module, out: Path, runtimes: Sequence[str], calib_images: int) -> Dict[str, str]:
    """Export ``model`` (the student of ``cfg``) for the exported ``runtimes``; {runtime: file}."""
    formats = [f for f, wanted in (("torchscript", ("torchscript",)), ("onnx", ("onnx", "onnx_int8")))
               if any(r in runtimes for r in wanted)]
    if not formats:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "student_random.pth"
    torch.save({"model": model.state_dict()}, weights)
    calibration = _calibration(cfg, calib_images) if "onnx_int8" in runtimes else None
    written = export_formats(cfg, str(weights), str(out), formats, calibration=calibration)
    return {r: written[r] for r in runtimes if r in written}


def _runtime_options(cfg: CfgNode, threads: int) -> RuntimeOptions:
    """``cfg``'s runtime settings; ONNX Runtime gets ``threads`` unless the config sets its own."""
    options = RuntimeOptions.from_config(cfg)
    return dataclasses.replace(options, intra_op_threads=options.intra_op_threads or threads)


def _runs_on(runtime: str, device: str) -> bool:
    """Whether the student ``runtime`` runs on ``device``: on CUDA, ONNX Runtime needs its CUDA
    provider, and int8 graphs run on CPU only."""
    if device == "cpu" or runtime in ("pytorch", "torchscript"):
        return True
    if runtime == "onnx_int8":
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@dataclass
class Entry:
    """One timed detector: what it is, and the callable and model behind it."""

    model: str
    runtime: str
    variant: str
    detector: nn.Module
    file: Optional[str] = None
    runner: Optional[nn.Module] = None
    options: RuntimeOptions = field(default_factory=RuntimeOptions)

    @property
    def name(self) -> str:
        text = f"{self.model}, {RUNTIMES[self.runtime]}"
        return text if self.variant == BASELINE else f"{text}, {self.variant}"


def _entries(detectors: Detectors, device: str, runtimes: Sequence[str], fixed_work: bool, threads: int,
             calib_images: int, export_dir: Path) -> List[Entry]:
    """Every detector of one recipe, ready to run on ``device``."""
    teacher = _detector(detectors.teacher, fixed_work)
    student = _detector(detectors.students[BASELINE], fixed_work)
    entries = [Entry(TEACHER, "pytorch", BASELINE, teacher, runner=teacher)]
    used = [r for r in runtimes if _runs_on(r, device)]
    exports: Dict[str, Dict[str, str]] = {}
    for number, (variant, cfg) in enumerate(detectors.students.items()):
        # A variant that only sets EXPORT.RUNTIME runs the recipe's detector and files.
        graph = _graph_key(cfg)
        runtime_only = variant != BASELINE and graph == _graph_key(detectors.students[BASELINE])
        if variant == BASELINE or runtime_only:
            model = student
        else:
            model = build_predictor(cfg).model
            model.load_state_dict(student.state_dict())
        options = _runtime_options(cfg, threads)
        if graph not in exports:
            exports[graph] = _export(cfg, model, export_dir / f"{detectors.recipe}_{number}", used, calib_images)
        files = exports[graph]
        for runtime in used:
            if runtime == "pytorch":
                if runtime_only:
                    continue
                entries.append(Entry(STUDENT, runtime, variant, model, runner=model, options=options))
                continue
            # The graph's own threshold, so that the exported student returns what PyTorch's does.
            predictor = DeployedPredictor(files[runtime], cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, device, options)
            entries.append(Entry(STUDENT, runtime, variant, model, files[runtime], predictor.model, options))
    return entries


def _graph_key(cfg: CfgNode) -> str:
    """What an exported graph is made of: the config less its runtime settings."""
    cfg = cfg.clone()
    cfg.EXPORT.pop("RUNTIME")
    return cfg.dump()


def _counts(entry: Entry, inputs: List[Dict]) -> Dict[str, Optional[int]]:
    if entry.runtime == "pytorch":
        return work_counts(entry.detector, inputs)
    return {"proposals": None, "detections": len(entry.runner(inputs)[0]["instances"])}


def _case_rows(entries: List[Entry], recipe: str, size: Tuple[int, int], device: str, threads: int,
               repeats: int, warmup: int) -> List[Dict]:
    """Time every entry on one input size, interleaved; one row each."""
    inputs = model_inputs(_scene(TIMED_SCENE), *size)
    with torch.no_grad():
        fns = {e.name: (lambda e=e: e.runner(inputs)) for e in entries}
        stats = time_interleaved(fns, repeats, warmup, device=torch.device(device))
        counts = {e.name: _counts(e, inputs) for e in entries}
    teacher = stats[entries[0].name].median
    gmacs = lru_cache(maxsize=None)(lambda detector: backbone_gmacs(detector, *size))
    rows = []
    for e in entries:
        rows.append({
            "recipe": recipe, "size": list(size), "device": device, "threads": threads,
            "model": e.model, "runtime": e.runtime, "variant": e.variant, "name": e.name,
            "params_M": count_parameters(e.detector) / 1e6, "backbone_GMACs": gmacs(e.detector),
            **counts[e.name], "latency": stats[e.name].to_dict(), "latency_over_teacher": stats[e.name].median / teacher,
            "runtime_options": dataclasses.asdict(e.options) if e.runtime != "pytorch" else None,
        })
        logger.info(f"{recipe} {device} {size[0]}x{size[1]} {e.name}: {stats[e.name].format_ms()} "
                    f"({rows[-1]['latency_over_teacher']:.2f}x teacher), {counts[e.name]}")
    return rows


def _case_profiles(entries: List[Entry], recipe: str, size: Tuple[int, int], device: str, runs: int,
                   trace_dir: Path) -> List[Dict]:
    """Stage profiles of the PyTorch and ONNX Runtime entries on one input size."""
    inputs = model_inputs(_scene(TIMED_SCENE), *size)
    trace_dir.mkdir(parents=True, exist_ok=True)
    profiles = []
    for e in entries:
        if e.runtime == "pytorch":
            with torch.no_grad():
                profile = torch_stage_profile(e.detector, lambda e=e: e.detector(inputs), runs, torch.device(device))
        elif e.runtime.startswith("onnx"):
            image = inputs[0]["image"].float().numpy()
            profile = onnx_stage_profile(e.file, image, runs, e.options, device, str(trace_dir))
        else:
            continue
        profiles.append({"recipe": recipe, "size": list(size), "device": device, "name": e.name, **profile})
    return profiles


def _resolve_sizes(texts: Sequence[str], native: Tuple[int, int]) -> List[Tuple[int, int]]:
    return list(dict.fromkeys(native if t == NATIVE else parse_size(t) for t in texts))


def latency(args: argparse.Namespace, device: str, out: Path) -> Tuple[List[Dict], List[Dict], Dict[str, str]]:
    """Rows (and profiles) of every recipe and size on ``device``; {case: earlier equal case}."""
    threads = torch.get_num_threads()
    rows: List[Dict] = []
    profiles: List[Dict] = []
    measured: Dict[Tuple[str, Tuple[int, int]], str] = {}
    same_as: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            detectors = recipe_detectors(recipe, device, args.fixed_work, args.opts, args.deploy_opts)
            sizes = []
            for size in _resolve_sizes(args.sizes, detectors.native):
                case = f"{recipe} {size[0]}x{size[1]}"
                earlier = measured.setdefault((detectors.key(), size), recipe)
                if earlier != recipe:
                    same_as[case] = f"{earlier} {size[0]}x{size[1]}"
                else:
                    sizes.append(size)
            if not sizes:
                continue
            entries = _entries(detectors, device, args.runtimes, args.fixed_work, threads, args.calib_images,
                               Path(tmp))
            for size in sizes:
                rows += _case_rows(entries, recipe, size, device, threads, args.repeats, args.warmup)
                if args.profile:
                    profiles += _case_profiles(entries, recipe, size, device, args.profile_runs, out / "profiles")
    return rows, profiles, same_as


def _count(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def _latency_markdown(rows: List[Dict], same_as: Dict[str, str]) -> str:
    table = []
    for r in rows:
        t = r["latency"]
        table.append([r["recipe"], "x".join(map(str, r["size"])), r["name"], f"{r['params_M']:.2f}",
                      f"{r['backbone_GMACs']:.1f}", _count(r["proposals"]), _count(r["detections"]),
                      f"{1e3 * t['median']:.1f}", f"{1e3 * t['q1']:.1f}-{1e3 * t['q3']:.1f}",
                      f"{1e3 * t['min']:.1f}-{1e3 * t['max']:.1f}", f"{r['latency_over_teacher']:.2f}"])
    text = markdown_table(["Recipe", "Input", "Detector", "Params (M)", "Backbone GMACs", "Proposals", "Detections",
                           "Median (ms)", "IQR (ms)", "Min-max (ms)", "Latency / teacher"], table)
    if same_as:
        text += "\n\n" + "; ".join(f"{case}: the detectors of {earlier}" for case, earlier in same_as.items()) + "."
    return text


def _profile_markdown(profiles: List[Dict]) -> str:
    """One table per recipe and size: stages as rows, detectors as columns (ms and share)."""
    parts = []
    cases = list(dict.fromkeys((p["recipe"], tuple(p["size"]), p["device"]) for p in profiles))
    stages = [*INFERENCE_STAGES, OTHER, "total"]
    for recipe, size, device in cases:
        chosen = [p for p in profiles if (p["recipe"], tuple(p["size"]), p["device"]) == (recipe, size, device)]
        rows = [[stage, *(f"{p['stages'][stage]:.1f} ({100 * p['stages'][stage] / p['stages']['total']:.0f}%)"
                          for p in chosen)] for stage in stages]
        parts += [f"### {recipe} {size[0]}x{size[1]} ({device}), ms per run", "",
                  markdown_table(["Stage", *(p["name"] for p in chosen)], rows), "",
                  "Largest operators (own ms per run): " + "; ".join(
                      f"{p['name']}: " + ", ".join(f"{o['op']} {o['self_ms']:.0f}" for o in p["top_ops"][:5])
                      for p in chosen), ""]
    return "\n".join(parts)


def run_benchmark(args: argparse.Namespace, argv: Sequence[str] = ()) -> Dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but no GPU is available")
    out = Path(args.out)
    machine = numeric_environment(devices)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = "hkd-benchmark " + " ".join(shlex.quote(a) for a in argv)
    result: Dict = {"command": command, "date": date, "machine": machine, "threads": torch.get_num_threads(),
                    "fixed_work": args.fixed_work, "deploy_opts": [list(o) for o in args.deploy_opts], "seed": 0}
    md = ["# hkd_d2 benchmark", "", f"`{command}`", "",
          f"{date}; {format_environment(machine)}; random weights (seed 0)"
          + ("; fixed work (hkd_d2.tools.fixed_work)" if args.fixed_work else "") + ".", ""]
    for device in devices:
        if args.training:
            config = _config_file(args.train_config)
            size = parse_size(args.train_size) if args.train_size else _train_size(config)
            cost = training_cost(config, device, size, args.train_batch, args.repeats,
                                 args.profile_runs if args.profile else 0)
            result.setdefault("training", []).append(cost)
            md += [f"## HKD training cost ({device})", "", training_markdown(cost), ""]
            continue
        rows, profiles, same_as = latency(args, device, out)
        result.setdefault("latency", []).extend(rows)
        result.setdefault("same_as", {}).update(same_as)
        md += [f"## Inference latency ({device}, batch 1, median of {args.repeats} interleaved rounds)", "",
               _latency_markdown(rows, same_as), ""]
        if profiles:
            result.setdefault("profiles", []).extend(profiles)
            md += [f"## Stage profiles ({device})", "", _profile_markdown(profiles)]
    write_json(out / "benchmark.json", result)
    write_text(out / "benchmark.md", "\n".join(md))
    print("\n".join(md))
    return result


def _train_size(config_file: str) -> Tuple[int, int]:
    cfg = load_config(config_file)
    return max(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    setup_logger(output=str(Path(args.out) / "log.txt"), name="hkd_d2")
    return run_benchmark(args, argv)


if __name__ == "__main__":
    main()

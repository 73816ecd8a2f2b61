"""Benchmark: teacher vs student (PyTorch and exported) latency, size and compute; HKD training cost.

Figures (written to ``OUT/benchmark.json`` and ``OUT/benchmark.md``):

* latency, batch 1, at each ``--sizes`` (default 600x800 and 480x640), median and IQR/min/max
  of ``--repeats`` runs, on every device (CPU, and CUDA when present), with the student/teacher
  ratio from the same run; the CPU-sized ``configs/synthetic`` detectors, randomly initialised (with
  their small heads, weights do not change the cost);
* parameters and backbone GMACs;
* training cost on generated scenes, for ``configs/synthetic/hkd_R50_to_R18.yaml``: the same
  student trained alone (step), its teacher's no-grad forward (backbone + box head on the step's
  RoIs, what HKD runs), the HKD step, and
  ``HKD step / (student step + teacher forward)``; peak memory: ``torch.cuda.max_memory_allocated``
  on GPU; on CPU the growth of the process's peak resident set (``ru_maxrss``) during the
  steps, each measurement in its own fresh process so the peaks do not mask each other;
* the exported student (``hkd_d2.export``: TorchScript, ONNX Runtime fp32, ONNX Runtime int8
  calibrated on generated scenes) in the same latency table, on CPU, through
  :class:`~hkd_d2.deploy.DeployedPredictor`'s model (``--no-exported`` leaves it out);
* the numeric environment of every figure (torch threads, CPU, cores, torch version, devices:
  :mod:`hkd_d2.tools.environment`).

The evaluator's speed against a reference loop is ``benchmarks/miss_rate.py``'s.
"""
import argparse
import logging
import multiprocessing
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from ..data.synthetic import SyntheticConfig, render_scene
from ..deploy import DeployedPredictor
from ..engine.setup import load_config
from ..export import ONNX_FILE, export_formats
from ..model_zoo import get_config_file
from .complexity import backbone_gmacs, count_parameters
from .environment import format_environment, numeric_environment
from .inference import build_predictor, model_inputs
from .report import markdown_table, write_json, write_text
from .runs import teacher_config
from .timing import TimingStats, time_call

__all__ = ["parse_args", "run_benchmark", "main"]

logger = logging.getLogger("hkd_d2.benchmark")

# The CPU-sized configs/synthetic detectors (the demo's): their heads are small, so a randomly
# initialised model costs what a trained one does (the CityPersons recipes' 1000 proposals x FC 1024
# box head make the latency of random weights depend on how many boxes survive NMS).
CONFIGS = {
    "teacher R50-FPN": ("synthetic/teacher_R50_FPN.yaml", []),
    "student R18-FPN": ("synthetic/student_R18_FPN.yaml", []),
    "student R18-FPN, FPN 32 ch": ("synthetic/student_R18_FPN.yaml", ["MODEL.FPN.OUT_CHANNELS", "32"]),
}
HKD_CONFIG = "synthetic/hkd_R50_to_R18.yaml"
# The student of HKD_CONFIG trained alone (training cost).
STUDENT_CONFIG = "synthetic/student_R18_FPN.yaml"
# The exported student's rows: name -> file written by export_formats (the "student R18-FPN" detector).
EXPORTED = {
    "student R18-FPN, TorchScript": "torchscript",
    "student R18-FPN, ONNX Runtime fp32": "onnx",
    "student R18-FPN, ONNX Runtime int8": "onnx_int8",
}
EXPORTED_CONFIG = "student R18-FPN"
# Generated scenes the int8 student is calibrated on.
CALIBRATION_SCENES = 8


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_output", help="output folder")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="only this device (default: cpu, and cuda when available)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (after one warm-up)")
    p.add_argument("--sizes", nargs="+", default=["600x800", "480x640"], help="latency input sizes HxW")
    p.add_argument("--train-size", default="480x640", help="training-cost image size HxW")
    p.add_argument("--train-batch", type=int, default=2, help="images per training step")
    p.add_argument("--no-narrow", action="store_true", help="leave out the FPN-32 student")
    p.add_argument("--no-exported", action="store_true", help="leave out the exported student (TorchScript, ONNX)")
    p.add_argument("--no-training", action="store_true", help="leave out the training cost (latency only)")
    return p.parse_args(argv)


def _size(text: str) -> List[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"Size {text!r} is not HxW (e.g. 600x800)") from None
    return [h, w]


def _cfg(config: str, opts: Sequence[str], device: str) -> CfgNode:
    return load_config(get_config_file(config), list(opts) + ["MODEL.DEVICE", device])


def latency_table(configs: Dict[str, tuple], sizes: Sequence[List[int]], device: str, repeats: int) -> List[Dict]:
    """One row per detector and size: latency stats, parameters, backbone GMACs."""
    image, _ = render_scene(SyntheticConfig(), 1, 0)
    rows = []
    for name, (config, opts) in configs.items():
        model = build_predictor(_cfg(config, opts, device)).model
        params = count_parameters(model)
        for h, w in sizes:
            inputs = model_inputs(image, h, w)
            with torch.no_grad():
                stats = time_call(lambda: model(inputs), repeats, warmup=1, device=model.device)
            rows.append({"model": name, "device": device, "size": [h, w], "params_M": params / 1e6,
                         "backbone_GMACs": backbone_gmacs(model, h, w), "latency": stats.to_dict()})
            logger.info(f"{name} {device} {h}x{w}: {stats.format_ms()}")
    return rows


def _training_batch(height: int, width: int, batch: int) -> List[Dict]:
    """Generated scenes as training inputs: image (3, H, W) and gt Instances (every object)."""
    cfg = SyntheticConfig(width=width, height=height)
    inputs = []
    for index in range(batch):
        image, objects = render_scene(cfg, 0, index)
        instances = Instances((height, width))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o.box for o in objects)], dtype=torch.float32)
        instances.gt_boxes = Boxes(boxes.reshape(-1, 4))
        instances.gt_classes = torch.zeros(len(objects), dtype=torch.int64)
        instances.gt_ignore = torch.tensor([o.kind == "ignore" for o in objects], dtype=torch.bool)
        inputs.append({"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "instances": instances,
                       "height": height, "width": width})
    return inputs


def _peak_memory_mb(device: torch.device, baseline: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline


def _teacher_proposals(inputs: List[Dict], rois_per_image: int, device: torch.device) -> List[Instances]:
    """RoIs for the teacher forward: jittered copies of each image's gt boxes, (R, 4) per image."""
    generator = torch.Generator().manual_seed(0)
    proposals = []
    for x in inputs:
        gt = x["instances"].gt_boxes.tensor
        picks = gt[torch.randint(len(gt), (rois_per_image,), generator=generator)]
        jitter = torch.randn(picks.shape, generator=generator) * 0.1 * (picks[:, 2:] - picks[:, :2]).repeat(1, 2)
        inst = Instances(x["instances"].image_size)
        inst.proposal_boxes = Boxes((picks + jitter).to(device))
        proposals.append(inst)
    return proposals


def _teacher_cfg(device: str) -> CfgNode:
    """The config of the teacher ``HKD_CONFIG`` names."""
    return load_config(teacher_config(get_config_file(HKD_CONFIG)), ["MODEL.DEVICE", device])


def _training_configs(device: str, teacher_weights: str) -> Dict[str, CfgNode]:
    """HKD (``HKD_CONFIG``), its teacher, and the same student trained alone (same RoI pooler)."""
    hkd = _cfg(HKD_CONFIG, ["MODEL.TEACHER.WEIGHTS", teacher_weights], device)
    student = _cfg(STUDENT_CONFIG, ["MODEL.ROI_BOX_HEAD.POOLER_NAME", hkd.MODEL.ROI_BOX_HEAD.POOLER_NAME], device)
    return {"student": student, "teacher": _teacher_cfg(device), "hkd": hkd}


def training_cost_worker(kind: str, device: str, size: List[int], batch: int, repeats: int,
                         teacher_weights: str) -> Dict:
    """Time one kind of training work ("student", "teacher", "hkd") in this process; peak memory."""
    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = _training_configs(device, teacher_weights)[kind]
    model = build_model(cfg)
    inputs = _training_batch(*size, batch)
    if kind == "teacher":
        model.eval()
        proposals = _teacher_proposals(inputs, cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, dev)

        @torch.no_grad()
        def step():
            images = model.preprocess_image(inputs)
            model.roi_heads.pool_and_predict(model.backbone(images.tensor), proposals)
    else:
        model.train()
        # lr 0: the step costs the same, but the weights (and a random teacher's huge distillation
        # losses) cannot drive the timed model to Inf/NaN over the repeats.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

        def step():
            loss = sum(model(inputs).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with EventStorage():
        stats = time_call(step, repeats, warmup=1, device=dev)
    return {"kind": kind, "time": stats.to_dict(), "peak_memory_MB": _peak_memory_mb(dev, baseline)}


def training_cost(device: str, size: List[int], batch: int, repeats: int) -> Dict:
    """Student step, teacher forward, HKD step (each in a fresh process), and the HKD overhead ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        teacher = build_model(_teacher_cfg("cpu"))
        weights = str(Path(tmp) / "teacher_random.pth")
        torch.save({"model": teacher.state_dict()}, weights)
        del teacher
        results = {}
        context = multiprocessing.get_context("spawn")
        for kind in ("student", "teacher", "hkd"):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                results[kind] = pool.submit(training_cost_worker, kind, device, size, batch, repeats, weights).result()
            logger.info(f"training cost {kind} {device}: {TimingStats(**results[kind]['time']).format_ms()}, "
                        f"peak memory {results[kind]['peak_memory_MB']:.0f} MB")
    median = {k: v["time"]["median"] for k, v in results.items()}
    results["hkd_over_student_plus_teacher"] = median["hkd"] / (median["student"] + median["teacher"])
    results["memory_measure"] = ("torch.cuda.max_memory_allocated" if device == "cuda"
                                 else "growth of ru_maxrss during the timed steps (fresh process per kind)")
    results.update(device=device, size=size, batch=batch)
    return results


def exported_latency_table(sizes: Sequence[List[int]], repeats: int) -> List[Dict]:
    """Rows of the exported ``EXPORTED_CONFIG`` student (random weights, CPU): one per runtime
    and size, timed as :func:`latency_table` times the PyTorch detectors (batch 1, fixed size)."""
    config, opts = CONFIGS[EXPORTED_CONFIG]
    cfg = _cfg(config, opts, "cpu")
    model = build_predictor(cfg).model
    image, _ = render_scene(SyntheticConfig(), 1, 0)
    scenes = [render_scene(SyntheticConfig(), 0, i)[0] for i in range(CALIBRATION_SCENES)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "student_random.pth")
        torch.save({"model": model.state_dict()}, weights)
        onnx_file = str(Path(tmp) / "export" / ONNX_FILE)

        def calibration():
            preprocess = DeployedPredictor(onnx_file).preprocess
            return (preprocess(scene).numpy() for scene in scenes)

        written = export_formats(cfg, weights, str(Path(tmp) / "export"), ("torchscript", "onnx"), calibration=calibration)
        for name, artifact in EXPORTED.items():
            runner = DeployedPredictor(written[artifact]).model
            for h, w in sizes:
                inputs = model_inputs(image, h, w)
                stats = time_call(lambda: runner(inputs), repeats, warmup=1)
                rows.append({"model": name, "device": "cpu", "size": [h, w], "params_M": count_parameters(model) / 1e6,
                             "backbone_GMACs": backbone_gmacs(model, h, w), "latency": stats.to_dict()})
                logger.info(f"{name} cpu {h}x{w}: {stats.format_ms()}")
    return rows


def _latency_markdown(rows: List[Dict]) -> str:
    teacher = {(r["device"], tuple(r["size"])): r["latency"]["median"] for r in rows if r["model"] == "teacher R50-FPN"}
    table = []
    for r in rows:
        t = r["latency"]
        ratio = t["median"] / teacher[(r["device"], tuple(r["size"]))]
        table.append([r["model"], r["device"], "x".join(map(str, r["size"])), f"{r['params_M']:.2f}",
                      f"{r['backbone_GMACs']:.1f}", f"{1e3 * t['median']:.1f}",
                      f"{1e3 * t['q1']:.1f}-{1e3 * t['q3']:.1f}", f"{1e3 * t['min']:.1f}-{1e3 * t['max']:.1f}",
                      f"{ratio:.2f}"])
    return markdown_table(["Model", "Device", "Input", "Params (M)", "Backbone GMACs", "Median (ms)", "IQR (ms)",
                           "Min-max (ms)", "Latency / teacher"], table)


def _training_markdown(cost: Dict) -> str:
    rows = [[name, f"{1e3 * cost[k]['time']['median']:.0f}",
             f"{1e3 * cost[k]['time']['q1']:.0f}-{1e3 * cost[k]['time']['q3']:.0f}", f"{cost[k]['peak_memory_MB']:.0f}"]
            for k, name in (("student", "student step"), ("teacher", "teacher forward (no grad)"), ("hkd", "HKD step"))]
    h, w = cost["size"]
    return (markdown_table(["Work", "Median (ms)", "IQR (ms)", "Peak memory (MB)"], rows)
            + f"\n\n{cost['device']}, batch {cost['batch']} at {h}x{w}. HKD step / (student step + teacher forward) "
            f"= **{cost['hkd_over_student_plus_teacher']:.2f}**. Memory: {cost['memory_measure']}.")


def run_benchmark(args: argparse.Namespace) -> Dict:
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but no GPU is available")
    configs = {k: v for k, v in CONFIGS.items() if not (args.no_narrow and "FPN 32" in k)}
    sizes = [_size(s) for s in args.sizes]
    environment = numeric_environment(devices)
    result = {"environment": environment, "latency": [], "training": []}
    md = ["# hkd_d2 benchmark", "", f"Numeric environment: {format_environment(environment)}; "
          f"median of {args.repeats} runs after one warm-up; randomly initialised detectors.", ""]
    for device in devices:
        rows = latency_table(configs, sizes, device, args.repeats)
        if device == "cpu" and not args.no_exported:
            rows += exported_latency_table(sizes, args.repeats)
        result["latency"] += rows
        md += [f"## Inference latency ({device}, batch 1)", "", _latency_markdown(rows), ""]
        if not args.no_training:
            cost = training_cost(device, _size(args.train_size), args.train_batch, args.repeats)
            result["training"].append(cost)
            md += [f"## Training cost ({device})", "", _training_markdown(cost), ""]
    out = Path(args.out)
    write_json(out / "benchmark.json", result)
    write_text(out / "benchmark.md", "\n".join(md))
    print("\n".join(md))
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    setup_logger(output=str(Path(args.out) / "log.txt"), name="hkd_d2")
    return run_benchmark(args)


if __name__ == "__main__":
    main()

"""What one HKD training step costs against the student's own step and the teacher's forward.

Three kinds of work on the same generated batch, with the weights of
:func:`~hkd_d2.tools.fixed_work.trained_like_weights`, timed interleaved in one fresh process (one
step of each per round, so that a change of machine load falls on all three alike), and their
peak memory each taken alone in a fresh process:

* ``student``: a training step (forward, backward, SGD step) of the distillation config's student
  detector trained alone (same pooler, same RoI sampling);
* ``teacher``: the teacher's no-grad forward that HKD runs: preprocessing and backbone + FPN,
  then its RoI pooling and box head on ``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` RoIs per image
  (jittered ground-truth boxes, as many as the step samples);
* ``hkd``: a training step of the distillation config (student + teacher + distillation terms).

``hkd / (student + teacher)`` is the distiller's overhead: 1 when distillation adds nothing but
the teacher's forward. Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the growth
of the process's peak resident set (``ru_maxrss``) over two steps (the model and the batch are in
place before), and the process's whole peak. With ``profile_runs``, a ``torch.profiler`` profile
of each kind by stage (:data:`STUDENT_RANGES`, :data:`TEACHER_RANGES`, the distillation terms,
backward, optimizer) tells where an overhead comes from.
"""
import multiprocessing
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ..data.synthetic import SyntheticConfig, render_scene
from ..engine.setup import load_config
from ..export import student_config
from .fixed_work import FIXED_WORK_OPTS, trained_like_weights
from .report import markdown_table
from .runs import teacher_config
from .stage_profile import OTHER, mean_profile, torch_stage_profile
from .timing import time_interleaved

__all__ = ["KINDS", "memory_worker", "timing_worker", "training_configs", "training_cost", "training_markdown"]

KINDS = ("student", "teacher", "hkd")
# Range label -> (attribute path, method) of the student's work in a training step.
STUDENT_RANGES = {
    "student backbone+FPN": ("backbone", "forward"),
    "student RPN": ("proposal_generator", "forward"),
    "student RoI sampling": ("roi_heads", "label_and_sample_proposals"),
    "student RoI pooling + box head": ("roi_heads", "pool_and_predict"),
    "student box losses": ("roi_heads.box_predictor", "losses"),
}
# ... and of the teacher's, in the distiller (``model.teacher``, a FrozenTeacher).
TEACHER_RANGES = {
    "teacher backbone+FPN": ("teacher", "features"),
    "teacher RoI pooling + box head": ("teacher", "pool_and_predict"),
}
# ... of a plain teacher detector doing the same work (the "teacher" kind).
TEACHER_DETECTOR_RANGES = {
    "teacher backbone+FPN": ("backbone", "forward"),
    "teacher RoI pooling + box head": ("roi_heads", "pool_and_predict"),
}
STEP, BACKWARD, OPTIMIZER, DISTILL = "step", "backward", "optimizer", "distillation terms"
# Size of the generated image the FrozenBatchNorm statistics of trained-like weights are measured
# on: smaller than a training image, so that this forward does not set the process's peak memory
# before the measured steps.
STATISTICS_SIZE = (256, 512)


def training_configs(config_file: str, device: str, teacher_weights: str = "") -> Dict[str, CfgNode]:
    """Configs of the three kinds of work for the distillation config ``config_file``, with
    :data:`FIXED_WORK_OPTS` (its RPN keeps ``POST_NMS_TOPK_TRAIN`` proposals, so the step samples
    ``BATCH_SIZE_PER_IMAGE`` RoIs per image whatever the random scores)."""
    opts = list(FIXED_WORK_OPTS) + ["MODEL.DEVICE", device]
    hkd = load_config(config_file, opts + (["MODEL.TEACHER.WEIGHTS", teacher_weights] if teacher_weights else []))
    return {"student": student_config(hkd), "teacher": load_config(teacher_config(config_file), opts), "hkd": hkd}


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


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def _teacher_step(model: torch.nn.Module, inputs: List[Dict], rois_per_image: int):
    proposals = _teacher_proposals(inputs, rois_per_image, model.device)

    @torch.no_grad()
    def step():
        with torch.profiler.record_function(STEP):
            images = model.preprocess_image(inputs)
            model.roi_heads.pool_and_predict(model.backbone(images.tensor), proposals)

    return step


def _training_step(model: torch.nn.Module, inputs: List[Dict]):
    # lr 0: the step costs the same, but the weights (and a random teacher's large distillation
    # losses) cannot drive the timed model to Inf/NaN over the repeats.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def step():
        with torch.profiler.record_function(STEP):
            loss = sum(model(inputs).values())
            with torch.profiler.record_function(BACKWARD):
                optimizer.zero_grad()
                loss.backward()
            with torch.profiler.record_function(OPTIMIZER):
                optimizer.step()

    return step


def _ranges_and_stages(kind: str, model: torch.nn.Module) -> Tuple[Dict, Dict]:
    """The profile ranges of ``kind`` and its stages (each range one stage; the distillation
    terms' ranges one stage together)."""
    if kind == "teacher":
        ranges = dict(TEACHER_DETECTOR_RANGES)
    else:
        ranges = dict(STUDENT_RANGES)
    terms = []
    if kind == "hkd":
        ranges.update(TEACHER_RANGES)
        for i, term in enumerate(model.distill_terms):
            label = f"distill {type(term).__name__}"
            ranges[label] = (f"distill_terms.{i}", "forward")
            terms.append(label)
    stages = {label: ([label], []) for label in ranges if label not in terms}
    if terms:
        stages[DISTILL] = (terms, [])
    stages.update({BACKWARD: ([BACKWARD], []), OPTIMIZER: ([OPTIMIZER], [])})
    return ranges, stages


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    return trained_like_weights(model, _training_batch(*STATISTICS_SIZE, 1))


def _work(kind: str, config_file: str, device: str, inputs: List[Dict], teacher_weights: str):
    """The model of ``kind`` (trained-like random weights) and its step function."""
    torch.manual_seed(0)
    cfg = training_configs(config_file, device, teacher_weights)[kind]
    model = _trained_like(build_model(cfg))
    if kind == "teacher":
        return model.eval(), _teacher_step(model, inputs, cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE)
    return model.train(), _training_step(model, inputs)


def timing_worker(config_file: str, device: str, size: Tuple[int, int], batch: int, repeats: int,
                  teacher_weights: str, threads: int, profile_runs: int = 0) -> Dict[str, Dict]:
    """Time the three kinds of work interleaved in this process (a change of load falls on all
    alike), on ``threads`` CPU threads; with ``profile_runs``, each kind's stage profile after the
    timing, over as many interleaved rounds (one profiled step of each kind per round)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    inputs = _training_batch(*size, batch)
    work = {kind: _work(kind, config_file, device, inputs, teacher_weights) for kind in KINDS}
    with EventStorage():
        stats = time_interleaved({kind: step for kind, (_, step) in work.items()}, repeats, warmup=1, device=dev)
        results: Dict[str, Dict] = {kind: {"time": stats[kind].to_dict()} for kind in KINDS}
        rounds: Dict[str, List[Dict]] = {kind: [] for kind in KINDS}
        for _ in range(profile_runs):
            for kind, (model, step) in work.items():
                ranges, stages = _ranges_and_stages(kind, model)
                rounds[kind].append(torch_stage_profile(model, step, 1, dev, ranges, stages, total=STEP, warmup=0))
    if profile_runs:
        for kind in KINDS:
            results[kind]["profile"] = mean_profile(rounds[kind])
    return results


def memory_worker(kind: str, config_file: str, device: str, size: Tuple[int, int], batch: int,
                  teacher_weights: str, threads: int) -> Dict[str, float]:
    """Peak memory of two steps of ``kind`` alone in this process: growth over the steps (the
    model and batch are in place before) and the process's whole peak."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model, step = _work(kind, config_file, device, _training_batch(*size, batch), teacher_weights)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    baseline = _maxrss_mb()
    with EventStorage():
        for _ in range(2):
            step()
    if dev.type == "cuda":
        return {"peak_memory_MB": torch.cuda.max_memory_allocated(dev) / 2**20,
                "process_peak_memory_MB": torch.cuda.max_memory_allocated(dev) / 2**20}
    return {"peak_memory_MB": _maxrss_mb() - baseline, "process_peak_memory_MB": _maxrss_mb()}


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def training_cost(config_file: str, device: str, size: Tuple[int, int], batch: int, repeats: int,
                  profile_runs: int = 0) -> Dict:
    """Student step, teacher forward, HKD step of ``config_file``: times (interleaved, one fresh
    process), peak memory (a fresh process each), the HKD overhead ratio; on this process's number
    of CPU threads."""
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        teacher_cfg = training_configs(config_file, "cpu")["teacher"]
        teacher = build_model(teacher_cfg)
        _trained_like(teacher)
        weights = str(Path(tmp) / "teacher_random.pth")
        torch.save({"model": teacher.state_dict()}, weights)
        del teacher
        results: Dict = _in_fresh_process(timing_worker, config_file, device, size, batch, repeats, weights,
                                          threads, profile_runs)
        for kind in KINDS:
            results[kind].update(_in_fresh_process(memory_worker, kind, config_file, device, size, batch, weights,
                                                   threads))
    median = {k: results[k]["time"]["median"] for k in KINDS}
    results["hkd_over_student_plus_teacher"] = median["hkd"] / (median["student"] + median["teacher"])
    results["memory_measure"] = ("torch.cuda.max_memory_allocated" if device == "cuda"
                                 else "growth of ru_maxrss over two steps, each kind alone in a fresh process")
    results.update(config=config_file, device=device, size=list(size), batch=batch, threads=threads)
    return results


def _profile_markdown(cost: Dict) -> str:
    profiles = {k: cost[k]["profile"]["stages"] for k in KINDS}
    # Student stages, teacher stages, distillation, backward, optimizer, other, then the step.
    order = [*STUDENT_RANGES, *TEACHER_RANGES, DISTILL, BACKWARD, OPTIMIZER, OTHER, STEP]
    stages = [s for s in order if any(s in profiles[k] for k in KINDS)]
    rows = []
    for stage in stages:
        ms = [profiles[k].get(stage, 0.0) for k in KINDS]
        rows.append([stage, *(f"{v:.0f}" for v in ms), f"{ms[2] - ms[0] - ms[1]:+.0f}"])
    return markdown_table(["Stage (ms per step)", "student step", "teacher forward", "HKD step",
                           "HKD - (student + teacher)"], rows)


def training_markdown(cost: Dict) -> str:
    """The training-cost tables (and the stage profile when there is one)."""
    names = {"student": "student step", "teacher": "teacher forward (no grad)", "hkd": "HKD step"}
    rows = [[names[k], f"{1e3 * cost[k]['time']['median']:.0f}",
             f"{1e3 * cost[k]['time']['q1']:.0f}-{1e3 * cost[k]['time']['q3']:.0f}",
             f"{cost[k]['peak_memory_MB']:.0f}", f"{cost[k]['process_peak_memory_MB']:.0f}"] for k in KINDS]
    h, w = cost["size"]
    text = (markdown_table(["Work", "Median (ms)", "IQR (ms)", "Peak memory growth (MB)", "Process peak (MB)"], rows)
            + f"\n\n`{cost['config']}`, {cost['device']}, {cost['threads']} threads, batch {cost['batch']} at {h}x{w}. "
            f"HKD step / (student step + teacher forward) = **{cost['hkd_over_student_plus_teacher']:.3f}**. "
            f"Memory: {cost['memory_measure']}.")
    if all("profile" in cost[k] for k in KINDS):
        text += "\n\n" + _profile_markdown(cost)
    return text

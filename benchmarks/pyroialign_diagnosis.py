"""What PyRoIAlign's fusion learned in trained detectors, and what it feeds their box heads.

    python benchmarks/pyroialign_diagnosis.py RUN_DIR [RUN_DIR ...] [--label NAME ...] [--images 8] \\
        [--out benchmarks/results/pyroialign_diagnosis]

A RUN_DIR is the output folder of a finished run whose box head pools with PyRoIAlign
(``config.yaml`` and ``model_final.pth``; a distillation run is read as its student). Per run:

* **level shares**: the fusion conv's weight ``W (C, L*C, 1, 1)`` split into its L input blocks,
  ``||W_l|| / sum_k ||W_k||`` (the ``FUSE_INIT mean`` start gives 1/L each): which levels the
  trained fusion listens to;
* **RMS** on the RoIs the trained detector keeps for ``--images`` validation images: of each
  level's pooled features, of the level Detectron2's level assignment would pick for each RoI (what
  the single-level pooler of Table 3 row 1 hands the box head) and of the fused output;
* **moved**: ``||W - W_0|| / ||W_0||`` of the fusion conv and of fc1, ``W_0`` their weights at the
  start of the run (rebuilt from the run's ``SEED``, as training builds the detector first; not
  for a run trained without a fixed seed);
* **relative step size**: over ``--images`` training images (batches of 2, mapped as training maps them),
  the gradient norm of the fusion conv and of the box head's first fully connected layer divided by
  the norm of its weight: how far one unit-learning-rate step moves each, relative to its size.

Writes ``OUT.md`` and ``OUT.json``.
"""
import argparse
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from torch import nn

from hkd_d2.data import PedestrianDatasetMapper
from hkd_d2.engine.evaluate import StudentCheckpointer, build_test_model
from hkd_d2.engine.setup import load_config, resolve_device
from hkd_d2.modeling.pyramid_pooler import PyRoIAlign
from hkd_d2.tools.environment import format_environment, numeric_environment
from hkd_d2.tools.report import markdown_table, write_json, write_text


@dataclass
class Diagnosis:
    """One run's numbers (lists are per pyramid level, finest first)."""

    label: str
    level_share: List[float]
    level_rms: List[float]
    assigned_rms: float
    fused_rms: float
    fuse_moved: float
    fc1_moved: float
    fuse_step: float
    fc1_step: float
    rois: int


def load_run(run_dir: Path) -> Tuple[CfgNode, nn.Module]:
    """The config and trained detector of ``run_dir`` (its student for a distillation run), in eval mode."""
    config = run_dir / "config.yaml"
    weights = run_dir / "model_final.pth"
    for path in (config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished training run")
    cfg = resolve_device(load_config(str(config)))
    model = build_test_model(cfg)
    StudentCheckpointer(model).load(str(weights), checkpointables=[])
    if not isinstance(model.roi_heads.box_pooler, PyRoIAlign):
        raise ValueError(f"{run_dir}: the box head pools with {type(model.roi_heads.box_pooler).__name__}, "
                         "not PyRoIAlign")
    return cfg, model.eval()


def level_shares(fuse: nn.Module, levels: int) -> List[float]:
    """``||W_l|| / sum_k ||W_k||`` over the L input blocks of the fusion conv's weight."""
    blocks = fuse.weight.detach().chunk(levels, dim=1)
    norms = torch.stack([b.norm() for b in blocks])
    return (norms / norms.sum()).tolist()


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def pooled_rms(model: nn.Module, inputs: Sequence[Dict]) -> Dict[str, object]:
    """RMS of each level's pooled features, of the assigned level's and of the fused output, over the
    RoIs the box head pools for ``inputs`` (one image at a time)."""
    pooler: PyRoIAlign = model.roi_heads.box_pooler
    levels = len(pooler.level_poolers)
    seen: Dict[str, List[torch.Tensor]] = {"levels": [], "assigned": [], "fused": []}
    fuse_input: List[torch.Tensor] = []

    def on_pool(module, args, output):
        stacked, boxes = fuse_input.pop(), args[1]
        chunks = stacked.chunk(levels, dim=1)
        assigned = assign_boxes_to_levels(boxes, pooler.min_level, pooler.max_level, pooler.canonical_box_size,
                                          pooler.canonical_level)
        seen["levels"].append(torch.stack([c.pow(2).mean(dim=(1, 2, 3)) for c in chunks], dim=1))
        pick = torch.stack(chunks, dim=0)[assigned, torch.arange(stacked.shape[0])]
        seen["assigned"].append(pick.pow(2).mean(dim=(1, 2, 3)))
        seen["fused"].append(output.pow(2).mean(dim=(1, 2, 3)))

    def keep_input(module, args):
        fuse_input.append(args[0])

    hooks = [pooler.fuse.register_forward_pre_hook(keep_input), pooler.register_forward_hook(on_pool)]
    try:
        with torch.no_grad():
            for item in inputs:
                model([item])
    finally:
        for h in hooks:
            h.remove()
    per_level = torch.cat(seen["levels"]).mean(dim=0).sqrt().tolist()
    return {"level_rms": per_level, "assigned_rms": float(torch.cat(seen["assigned"]).mean().sqrt()),
            "fused_rms": float(torch.cat(seen["fused"]).mean().sqrt()), "rois": len(torch.cat(seen["fused"]))}


def _probed(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {"fuse": model.roi_heads.box_pooler.fuse.weight, "fc1": model.roi_heads.box_head.fc1.weight}


def moved_from_start(cfg: CfgNode, model: nn.Module) -> Dict[str, float]:
    """``||W - W_0|| / ||W_0||`` of the fusion conv and fc1; ``W_0`` rebuilt with the run's seed
    (NaN for a run without a fixed ``SEED``: its start cannot be rebuilt)."""
    if cfg.SEED < 0:
        return {f"{k}_moved": math.nan for k in _probed(model)}
    seed_all_rng(cfg.SEED)
    start = _probed(build_test_model(cfg))
    return {f"{k}_moved": float((w.detach() - start[k].detach()).norm() / start[k].detach().norm())
            for k, w in _probed(model).items()}


def relative_steps(model: nn.Module, inputs: Sequence[Dict]) -> Dict[str, float]:
    """Mean over batches of 2 of ``||grad|| / ||weight||`` for the fusion conv and the box head's fc1."""
    params = {f"{k}_step": w for k, w in _probed(model).items()}
    sums = {k: 0.0 for k in params}
    batches = [inputs[i:i + 2] for i in range(0, len(inputs) - 1, 2)]
    model.train()
    try:
        with EventStorage():
            for batch in batches:
                model.zero_grad()
                sum(model(list(batch)).values()).backward()
                for key, weight in params.items():
                    sums[key] += float(weight.grad.norm() / weight.detach().norm())
    finally:
        model.zero_grad()
        model.eval()
    return {k: v / len(batches) for k, v in sums.items()}


def diagnose(run_dir: Path, label: str, images: int) -> Diagnosis:
    cfg, model = load_run(run_dir)
    val = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:images]
    train = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:images]
    moved = moved_from_start(cfg, model)
    torch.manual_seed(0)
    rms = pooled_rms(model, [PedestrianDatasetMapper(cfg, False)(dict(r)) for r in val])
    steps = relative_steps(model, [PedestrianDatasetMapper(cfg, True)(dict(r)) for r in train])
    shares = level_shares(model.roi_heads.box_pooler.fuse, len(model.roi_heads.box_pooler.level_poolers))
    return Diagnosis(label=label, level_share=shares, **rms, **moved, **steps)


def table(rows: Sequence[Diagnosis]) -> str:
    levels = len(rows[0].level_share)
    names = [f"P{2 + i}" for i in range(levels)]
    headers = (["run"] + [f"share {n}" for n in names] + [f"RMS {n}" for n in names]
               + ["RMS assigned level", "RMS fused", "fused / assigned", "moved fuse", "moved fc1", "step fuse",
                  "step fc1", "RoIs"])
    body = [[r.label, *(f"{s:.3f}" for s in r.level_share), *(f"{v:.3f}" for v in r.level_rms),
             f"{r.assigned_rms:.3f}", f"{r.fused_rms:.3f}", f"{r.fused_rms / r.assigned_rms:.2f}",
             f"{r.fuse_moved:.3f}", f"{r.fc1_moved:.3f}", f"{r.fuse_step:.4f}", f"{r.fc1_step:.4f}", str(r.rois)] for r in rows]
    return markdown_table(headers, body)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished runs pooling with PyRoIAlign")
    p.add_argument("--label", nargs="+", help="one label per run (default: PARENT/RUN folder names)")
    p.add_argument("--images", type=int, default=8, help="validation and training images read")
    p.add_argument("--out", type=Path, default=Path("pyroialign_diagnosis"), help="writes OUT.md and OUT.json")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Diagnosis]:
    args = parse_args(argv)
    if args.label is not None and len(args.label) != len(args.runs):
        raise SystemExit(f"--label: {len(args.label)} labels for {len(args.runs)} runs")
    if args.images < 2:
        raise SystemExit("--images must be >= 2 (the training step reads batches of 2)")
    labels = args.label or [f"{r.resolve().parent.name}/{r.name}" for r in args.runs]
    rows = []
    for index, (run, label) in enumerate(zip(args.runs, labels), start=1):
        print(f"[{index}/{len(args.runs)}] {run}", flush=True)
        rows.append(diagnose(run, label, args.images))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    environment = format_environment(numeric_environment("cpu"))
    text = (f"# PyRoIAlign in trained detectors\n\nCommand: `python benchmarks/pyroialign_diagnosis.py "
            f"{' '.join(str(r) for r in args.runs)} --images {args.images}`  \nDate: {stamp}; {environment}.\n\n"
            + table(rows) + "\n\nshare: fraction of the fusion weight's norm on each level's block (1/L at the "
            "mean start); RMS: root mean square of the pooled features over the RoIs the box head pools; moved: "
            "||W - W_0|| / ||W_0|| from the run's start; step: "
            "||grad|| / ||weight|| of one training batch of 2, mean over batches.\n")
    write_text(args.out.with_suffix(".md"), text)
    write_json(args.out.with_suffix(".json"), {"date": stamp, "environment": environment,
                                               "runs": [asdict(r) for r in rows]})
    print(text)
    return rows


if __name__ == "__main__":
    main()

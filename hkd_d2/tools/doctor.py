"""Pre-flight check of a distillation config: is the teacher any good, do teacher and student agree,
and how large is each distillation term against the detection loss?

    python -m hkd_d2.tools.doctor --config-file configs/synthetic/hkd_R50_to_R18.yaml [KEY VALUE ...]

It builds the distiller (student + frozen teacher) exactly as training would, then reports

1. the teacher's detections on a few validation images (``DATASETS.TEST[0]``, else the training
   set): top score and recall at IoU 0.5 of the boxes above ``--score``; a teacher that loads but
   detects nothing (random weights, wrong ``INPUT.FORMAT``, pixel mean/std) is flagged;
2. the config keys where teacher and student disagree (:mod:`hkd_d2.modeling.compatibility`,
   the check the distiller itself makes when it is built: a disagreement on something a term
   reads stops the doctor there, with the keys), and the two backbones' padding;
3. each raw distillation term and the detection loss over ``--batches`` training batches, and the
   weight that brings each term to ``--target`` times the detection loss (the rule of
   ``MODEL.DISTILL.AUTO_BALANCE``, :mod:`hkd_d2.engine.calibration`).

Exit status 0 when nothing is flagged, 1 otherwise.
"""
import argparse
import itertools
import logging
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode, Boxes, Instances, pairwise_iou
from detectron2.utils.logger import setup_logger

from ..engine.calibration import LossMeasurement, balanced_weights, format_measurement, measure_losses
from ..engine.setup import load_config, resolve_device
from ..engine.trainer import Trainer
from ..modeling.compatibility import TeacherMismatchError, teacher_reads, teacher_student_mismatches
from .report import markdown_table

__all__ = ["TeacherCheck", "check_teacher_detections", "run_doctor", "main"]

logger = logging.getLogger("hkd_d2.doctor")


@dataclass
class TeacherCheck:
    """The teacher's detections on a few images against their ground truth."""

    images: int
    gt_boxes: int
    found: int
    top_score: float
    score_threshold: float
    ok: bool
    message: str

    @property
    def recall(self) -> float:
        return self.found / self.gt_boxes if self.gt_boxes else float("nan")


def check_teacher_detections(detections: Sequence[Instances], gt_boxes: Sequence[Boxes], score_threshold: float,
                             min_top_score: float, min_recall: float, iou: float = 0.5) -> TeacherCheck:
    """Judge a teacher by its detections (``pred_boxes``, ``scores``) on images with ``gt_boxes``.

    A trained detector gives some boxes a high score and finds a fair share of the pedestrians;
    a random one scores every box about alike (near 1/(K+1)) and finds them by chance only.
    Flagged when the top score is below ``min_top_score`` or the recall at ``iou`` of the boxes
    scoring at least ``score_threshold`` is below ``min_recall``.
    """
    found, total, top = 0, 0, 0.0
    for det, gt in zip(detections, gt_boxes):
        total += len(gt)
        if len(det) == 0:
            continue
        top = max(top, float(det.scores.max()))
        kept = det.pred_boxes[det.scores >= score_threshold]
        if len(gt) and len(kept):
            found += int((pairwise_iou(gt, kept).max(dim=1).values >= iou).sum())
    recall = found / total if total else float("nan")
    problems = []
    if top < min_top_score:
        problems.append(f"top score {top:.3f} < {min_top_score} (scores this flat come from random or "
                        "mismatched weights)")
    if total and recall < min_recall:
        problems.append(f"recall {recall:.2f} < {min_recall} at IoU {iou} (score >= {score_threshold})")
    if problems:
        message = ("The teacher detects (almost) nothing: " + "; ".join(problems) + ". Check MODEL.TEACHER.WEIGHTS "
                   "(random or another model's weights?), the teacher's INPUT.FORMAT and PIXEL_MEAN/PIXEL_STD.")
    else:
        message = f"The teacher detects: top score {top:.3f}, recall {recall:.2f} at IoU {iou} (score >= {score_threshold})."
    return TeacherCheck(len(detections), total, found, top, score_threshold, not problems, message)


def _probe_dataset(cfg: CfgNode) -> str:
    return cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else cfg.DATASETS.TRAIN[0]


def _probe_records(name: str, num_images: int) -> List[Dict]:
    records = [r for r in DatasetCatalog.get(name) if any(not a.get("ignore", 0) for a in r["annotations"])]
    return records[:num_images]


def teacher_detections(cfg: CfgNode, model, num_images: int) -> Tuple[List[Instances], List[Boxes]]:
    """Run the teacher detector (eval mode) on ``num_images`` test images with pedestrians."""
    name = _probe_dataset(cfg)
    records = _probe_records(name, num_images)
    mapper_loader = Trainer.build_test_loader(cfg, name)
    wanted = {r["file_name"] for r in records}
    detections, gts = [], []
    detector = model.teacher.detector
    with torch.no_grad():
        for inputs in mapper_loader:
            if inputs[0]["file_name"] not in wanted:
                continue
            detections.append(detector(inputs)[0]["instances"].to("cpu"))
            record = next(r for r in records if r["file_name"] == inputs[0]["file_name"])
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                     for a in record["annotations"] if not a.get("ignore", 0)]
            gts.append(Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)))
            if len(detections) == len(records):
                break
    return detections, gts


def _padding_problem(model) -> Optional[str]:
    s, t = model.backbone.size_divisibility, model.teacher.detector.backbone.size_divisibility
    if s != t:
        return f"backbone size divisibility: student {s} vs teacher {t} (the two would pad images differently)"
    return None


def run_doctor(cfg: CfgNode, num_images: int, num_batches: int, target: float, score: float,
               min_top_score: float, min_recall: float) -> Dict:
    """Every check; returns ``{"teacher", "mismatches", "padding", "losses", "balanced", "flagged"}``."""
    model = Trainer.build_model(cfg)  # raises TeacherMismatchError on a disagreement a term reads
    if getattr(model, "teacher", None) is None:
        raise ValueError("This config trains no distilled student (no teacher to check): "
                         "MODEL.META_ARCHITECTURE Distiller with distillation terms needed")
    teacher = check_teacher_detections(*teacher_detections(cfg, model, num_images), score, min_top_score, min_recall)
    logger.info(teacher.message)
    mismatches = teacher_student_mismatches(cfg, model.teacher.cfg, teacher_reads(model.distill_terms))
    for m in mismatches:
        logger.info(m.describe())
    padding = _padding_problem(model)
    if padding:
        logger.warning(padding)
    loader = Trainer.build_train_loader(cfg)
    losses: LossMeasurement = measure_losses(model, itertools.islice(iter(loader), num_batches))
    logger.info("Loss calibration:\n" + format_measurement(losses, target))
    flagged = (not teacher.ok) or padding is not None
    return {"teacher": teacher, "mismatches": mismatches, "padding": padding, "losses": losses,
            "balanced": balanced_weights(losses, target), "flagged": flagged}


def render(result: Dict, target: float) -> str:
    """Plain-text report of :func:`run_doctor`'s result."""
    losses: LossMeasurement = result["losses"]
    rows = [[name, f"{losses.raw[name]:.4f}", f"{losses.weights[name]:.4g}", f"{losses.ratio(name):.2f}",
             f"{result['balanced'][name]:.4g}", losses.weight_keys[name]] for name in losses.raw]
    problems = [result["padding"]] if result["padding"] else []
    notes = [m.describe() for m in result["mismatches"]]
    lines = [
        "# Distillation pre-flight check",
        "",
        "## Teacher", "", ("OK: " if result["teacher"].ok else "PROBLEM: ") + result["teacher"].message, "",
        "## Teacher-student agreement", "",
        *(["PROBLEM: " + p for p in problems] or ["OK: no disagreement on anything a term reads."]),
        *["note: " + n for n in notes], "",
        f"## Loss calibration (detection loss {losses.detection:.4f}, mean of {losses.batches} batch(es))", "",
        markdown_table(["Term", "raw L", "weight", "weighted / detection", f"weight for {target:g}x", "key"], rows), "",
        f"Rule: weight = {target:g} x detection loss / raw L (MODEL.DISTILL.AUTO_BALANCE.ENABLED True applies it "
        "at the start of training).",
        "",
        "Verdict: " + ("PROBLEMS found (see above)." if result["flagged"] else "no problem found."),
    ]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config-file", required=True, help="distillation config (Distiller)")
    p.add_argument("--num-images", type=int, default=8, help="validation images the teacher is run on")
    p.add_argument("--batches", type=int, default=4, help="training batches the losses are averaged over")
    p.add_argument("--target", type=float, default=0.25, help="wanted weighted term / detection loss")
    p.add_argument("--score", type=float, default=0.5, help="score of the teacher boxes counted for recall")
    p.add_argument("--min-top-score", type=float, default=0.7, help="flag a teacher whose best box scores lower")
    p.add_argument("--min-recall", type=float, default=0.1, help="flag a teacher that finds fewer pedestrians")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for name in ("detectron2", "hkd_d2"):
        setup_logger(name=name, abbrev_name=name[:3])
    cfg = resolve_device(load_config(args.config_file, args.opts))
    cfg.freeze()
    try:
        result = run_doctor(cfg, args.num_images, args.batches, args.target, args.score, args.min_top_score,
                            args.min_recall)
    except TeacherMismatchError as e:
        print(f"PROBLEM: {e}")
        return 1
    print(render(result, args.target))
    return 1 if result["flagged"] else 0


if __name__ == "__main__":
    sys.exit(main())

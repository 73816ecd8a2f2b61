"""Detectron2 evaluator for the miss-rate protocols, and the registry the trainer picks it from."""
import copy
import itertools
import json
import logging
import os
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from detectron2.utils.registry import Registry

from ..atomic import atomic_output
from .crowdhuman import CrowdHumanImage, crowdhuman_metrics
from .miss_rate import PERSON_CATEGORY_NAMES, PROTOCOLS, Detections, GroundTruth, Protocol, get_protocol, miss_rate_curves
from .miss_rate.inputs import corners_xywh
from .plots import plot_mr_fppi

__all__ = [
    "MissRateEvaluator",
    "CrowdHumanEvaluator",
    "EVALUATOR_REGISTRY",
    "EVALUATOR_OF_PROTOCOL",
    "build_evaluator",
]

logger = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Evaluator builders keyed by a dataset's ``MetadataCatalog`` field ``evaluator_type``.
Each is called as ``builder(cfg, dataset_name, output_dir)`` and returns a DatasetEvaluator.
"""

# COCO category id written for detections of class 0 (the "pedestrian" id of CityPersons'
# val_gt.json); class c is written as RESULTS_CATEGORY_ID + c.
RESULTS_CATEGORY_ID = 1
DETECTIONS_FILE = "miss_rate_detections.json"
# CrowdDet's detection dump (tools/test.py): one line per image with ID, height, width, dtboxes.
CROWDHUMAN_DETECTIONS_FILE = "crowdhuman_detections.odgt"
PLOT_FILE = "mr_fppi.png"
# A data set's evaluation protocol -> the evaluator_type (EVALUATOR_REGISTRY key) that scores it:
# the one home of the protocol names (register_pedestrian_dataset validates against it).
EVALUATOR_OF_PROTOCOL = {**{name: "miss_rate" for name in PROTOCOLS}, "crowdhuman": "crowdhuman"}


def image_predictions(inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per image of a batch: ``{"image_id", "boxes": (R, 4) float64 XYXY, "scores": (R,) float64,
    "classes": (R,) int64}`` of ``outputs[i]["instances"]`` (classes 0 without ``pred_classes``), the
    model's corners unchanged (the evaluations compute on them)."""
    predictions = []
    for inp, out in zip(inputs, outputs):
        instances = out["instances"]
        scores = instances.scores.detach().cpu().numpy().astype(np.float64).reshape(-1)
        classes = (instances.pred_classes.detach().cpu().numpy().astype(np.int64).reshape(-1)
                   if instances.has("pred_classes") else np.zeros(scores.shape, dtype=np.int64))
        predictions.append({
            "image_id": inp["image_id"],
            "boxes": instances.pred_boxes.tensor.detach().cpu().numpy().astype(np.float64).reshape(-1, 4),
            "scores": scores,
            "classes": classes,
        })
    return predictions


def class_predictions(predictions: Sequence[Dict[str, Any]], class_id: int) -> List[Dict[str, Any]]:
    """The :func:`image_predictions` of class ``class_id`` alone."""
    kept = []
    for p in predictions:
        mine = p["classes"] == class_id
        kept.append({**p, "boxes": p["boxes"][mine], "scores": p["scores"][mine], "classes": p["classes"][mine]})
    return kept


def coco_results(predictions: Sequence[Dict[str, Any]], corners: bool = False) -> List[Dict[str, Any]]:
    """COCO results (XYWH ``bbox``, ``score``, ``category_id`` = RESULTS_CATEGORY_ID + class) of
    :func:`image_predictions`; with ``corners``, each also keeps its XYXY box as ``corners`` (read by
    :class:`.miss_rate.Detections`)."""
    results = []
    for p in predictions:
        xywh = corners_xywh(p["boxes"]).tolist()
        for i, (b, s, c) in enumerate(zip(xywh, p["scores"].tolist(), p["classes"].tolist())):
            r = {"image_id": p["image_id"], "category_id": RESULTS_CATEGORY_ID + c, "bbox": b, "score": s}
            if corners:
                r["corners"] = p["boxes"][i].tolist()
            results.append(r)
    return results


def gather_predictions(predictions: List[Dict[str, Any]]) -> Optional[List[Dict]]:
    """All processes' :func:`image_predictions` on the main process, None elsewhere."""
    comm.synchronize()
    gathered = comm.gather(predictions, dst=0)
    if not comm.is_main_process():
        return None
    return list(itertools.chain.from_iterable(gathered))


def write_output(output_dir: Optional[str], file_name: str, text: str) -> None:
    """Write ``text`` to ``output_dir/file_name`` atomically (nothing without ``output_dir``)."""
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with atomic_output(os.path.join(output_dir, file_name)) as tmp:
            tmp.write_text(text)


# Protocol of person data registered without one (e.g. by register_coco_instances).
DEFAULT_PROTOCOL = "citypersons"


def ground_truth_from_records(records: Sequence[Dict[str, Any]], protocol: Protocol, source: str) -> GroundTruth:
    """GroundTruth of Detectron2 dataset records (annotation format of the project contract).

    No category is filtered: every annotation's ``ignore`` flag decides (:func:`class_records`
    prepares one class of several).
    """
    annotations = []
    for record in records:
        for ann in record.get("annotations", ()):
            ann = dict(ann, image_id=record["image_id"])
            mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
            if mode != BoxMode.XYWH_ABS:
                ann["bbox"] = BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYWH_ABS)
            annotations.append(ann)
    image_ids = sorted(r["image_id"] for r in records)
    return GroundTruth.from_annotations(image_ids, annotations, replace(protocol, category_id=None), source=source)


def class_records(records: Sequence[Dict[str, Any]], class_id: int) -> List[Dict[str, Any]]:
    """Records for scoring class ``class_id`` alone: the targets of the other classes become ignore
    regions (as CityPersons ignores riders when scoring pedestrians)."""
    return [
        {**r, "annotations": [a if a.get("category_id", 0) == class_id else {**a, "ignore": 1}
                              for a in r.get("annotations", ())]}
        for r in records
    ]


class ResultsCollector(DatasetEvaluator):
    """Collects every image's ``outputs[i]["instances"]`` (pred_boxes XYXY (R, 4), scores (R,)) as
    :func:`image_predictions`; subclasses score them in ``evaluate``."""

    _predictions: List[Dict[str, Any]]

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        self._predictions.extend(image_predictions(inputs, outputs))


class MissRateEvaluator(ResultsCollector):
    """Log-average miss rate (MR^-2, %) of a pedestrian dataset's detections, per setup.

    Ground truth comes from ``DatasetCatalog.get(dataset_name)`` and the protocol from
    ``MetadataCatalog.get(dataset_name).protocol`` ("citypersons" or "caltech"). Detections of
    all processes are gathered on the main one, written to ``output_dir`` as a COCO results JSON
    (plus an MR-FPPI plot when ``plot``), and scored.

    A data set of several ``thing_classes`` is scored class by class (:func:`class_records`: the
    other classes' targets are ignore regions, only the class's detections count), reported as
    ``MR_<class>``; ``MR`` is then the first class's.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        setups: Optional[Sequence[str]] = None,
        plot: bool = True,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``protocol``.
            output_dir: where the detections JSON and the plot go (None = nowhere).
            setups: setups to report (None/empty = the protocol's standard ones).
            plot: write ``mr_fppi.png`` into ``output_dir``.
        """
        self._dataset_name = dataset_name
        protocol = MetadataCatalog.get(dataset_name).get("protocol")
        if protocol is None:
            raise ValueError(f"Dataset {dataset_name!r} has no 'protocol' in its metadata ({'|'.join(PROTOCOLS)})")
        self._protocol = get_protocol(protocol)
        self._setups = list(setups) if setups else list(self._protocol.default_setups)
        unknown = [s for s in self._setups if s not in self._protocol.setups]
        if unknown:
            raise ValueError(f"Unknown setups {unknown} for protocol {protocol!r}; known: {list(self._protocol.setups)}")
        self._output_dir = output_dir
        self._plot = plot
        self._predictions: List[Dict[str, Any]] = []

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """{"MR": {setup: miss rate in percent}} (and ``MR_<class>`` for several classes) on the
        main process, {} elsewhere."""
        predictions = gather_predictions(self._predictions)
        if predictions is None:
            return {}
        write_output(self._output_dir, DETECTIONS_FILE, json.dumps(coco_results(predictions)))
        if not any(len(p["scores"]) for p in predictions):
            logger.warning("%s: no detections; every miss rate is 100%%", self._dataset_name)

        records = DatasetCatalog.get(self._dataset_name)
        classes = list(MetadataCatalog.get(self._dataset_name).get("thing_classes", []))
        if len(classes) <= 1:
            return OrderedDict(MR=self._miss_rates(records, predictions, self._dataset_name, plot=self._plot))
        results = OrderedDict()
        for c, name in enumerate(classes):
            results[f"MR_{name}"] = self._miss_rates(
                class_records(records, c), class_predictions(predictions, c), f"{self._dataset_name} ({name})",
                plot=self._plot and c == 0,
            )
        results["MR"] = copy.deepcopy(results[f"MR_{classes[0]}"])
        results.move_to_end("MR", last=False)
        return results

    def _miss_rates(self, records: List[Dict], predictions: List[Dict], name: str, plot: bool) -> Dict[str, float]:
        """{setup: MR %} of ``predictions`` against ``records`` (logged; plotted when ``plot``)."""
        gt = ground_truth_from_records(records, self._protocol, source=name)
        # Every prediction given is of the class scored (evaluate selects them).
        dt = Detections.from_results(coco_results(predictions, corners=True), gt,
                                     replace(self._protocol, category_id=None), source=name)
        curves = miss_rate_curves(gt, dt, self._protocol, self._setups)
        mr = OrderedDict((setup, 100.0 * c.log_average) for setup, c in curves.items())
        logger.info("Miss rate (%%) on %s:\n%s", name, create_small_table(mr))
        undefined = [setup for setup, value in mr.items() if np.isnan(value)]
        if undefined and gt.vis.size and np.unique(gt.vis).size == 1:
            logger.warning(
                "%s: every box has the same visibility (no vis_bbox/vis_ratio in the annotations?), so "
                "setups of occluded people (%s) have no ground truth and an MR of NaN",
                name, ", ".join(undefined),
            )
        if plot and self._output_dir:
            plot_mr_fppi(curves, os.path.join(self._output_dir, PLOT_FILE), title=f"{name} ({self._protocol.name})")
        return mr


@EVALUATOR_REGISTRY.register()
def miss_rate(cfg: CfgNode, dataset_name: str, output_dir: Optional[str]) -> DatasetEvaluator:
    """Builder of :class:`MissRateEvaluator` for ``evaluator_type == "miss_rate"``."""
    return MissRateEvaluator(
        dataset_name, output_dir, setups=cfg.TEST.MISS_RATE.SETUPS or None, plot=cfg.TEST.MISS_RATE.PLOT
    )


class CrowdHumanEvaluator(ResultsCollector):
    """AP@0.5, MR^-2 and JI (%) of a CrowdHuman-style data set, as CrowdDet computes them
    (:mod:`hkd_d2.evaluation.crowdhuman`), against the records' full boxes (``bbox``). The
    detections are written to ``output_dir`` as CrowdDet's detection dump (full precision)."""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._predictions: List[Dict[str, Any]] = []

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """{"crowdhuman": {"AP", "MR", "JI"} in percent} on the main process, {} elsewhere."""
        predictions = gather_predictions(self._predictions)
        if predictions is None:
            return {}
        records = DatasetCatalog.get(self._dataset_name)
        by_image = {p["image_id"]: p for p in predictions}
        write_output(self._output_dir, CROWDHUMAN_DETECTIONS_FILE,
                     "".join(json.dumps(detection_dump(r, by_image[r["image_id"]])) + "\n"
                             for r in records if r["image_id"] in by_image))
        images = [crowdhuman_image(r, by_image.get(r["image_id"])) for r in records]
        metrics = OrderedDict((k, 100.0 * v) for k, v in crowdhuman_metrics(images).items())
        logger.info("CrowdHuman metrics (%%) on %s:\n%s", self._dataset_name, create_small_table(metrics))
        return OrderedDict(crowdhuman=metrics)


def _record_xyxy(annotation: Dict[str, Any]) -> List[float]:
    """An annotation's box as XYXY, ``x + w`` in float64 (as the CrowdHuman scripts add them)."""
    mode = annotation.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode == BoxMode.XYWH_ABS:
        x, y, w, h = (float(v) for v in annotation["bbox"])
        return [x, y, x + w, y + h]
    return [float(v) for v in BoxMode.convert(list(annotation["bbox"]), mode, BoxMode.XYXY_ABS)]


def crowdhuman_image(record: Dict[str, Any], prediction: Optional[Dict[str, Any]]) -> CrowdHumanImage:
    """A record (annotations with full ``bbox``, ``ignore``) and its :func:`image_predictions`
    entry (None: the image has no detections) as one image."""
    anns = record.get("annotations", ())
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    prediction = prediction if prediction is not None else empty
    return CrowdHumanImage(
        gt=np.asarray([_record_xyxy(a) for a in anns], np.float64).reshape(-1, 4),
        ignore=np.array([bool(a.get("ignore", 0)) for a in anns], bool),
        dt=prediction["boxes"],
        scores=prediction["scores"],
        width=record["width"],
        height=record["height"],
    )


def detection_dump(record: Dict[str, Any], prediction: Dict[str, Any]) -> Dict[str, Any]:
    """One line of CrowdDet's detection dump: ``ID`` (the record's ``crowdhuman_id``), image
    size, ``dtboxes`` with ``box`` [x, y, w, h], ``score``, ``tag`` 1."""
    boxes = corners_xywh(prediction["boxes"]).tolist()
    return {
        "ID": record.get("crowdhuman_id", record["image_id"]),
        "height": record["height"],
        "width": record["width"],
        "dtboxes": [{"box": b, "score": s, "tag": 1} for b, s in zip(boxes, prediction["scores"].tolist())],
    }


@EVALUATOR_REGISTRY.register()
def crowdhuman(cfg: CfgNode, dataset_name: str, output_dir: Optional[str]) -> DatasetEvaluator:
    """Builder of :class:`CrowdHumanEvaluator` for ``evaluator_type == "crowdhuman"``."""
    return CrowdHumanEvaluator(dataset_name, output_dir)


@EVALUATOR_REGISTRY.register()
def coco(cfg: CfgNode, dataset_name: str, output_dir: Optional[str]) -> DatasetEvaluator:
    """Builder for ``evaluator_type == "coco"`` (``register_coco_instances``) person data: the
    miss-rate evaluator, with the metadata's ``protocol`` or :data:`DEFAULT_PROTOCOL`."""
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_classes", None):
        DatasetCatalog.get(dataset_name)  # load_coco_json sets thing_classes
    classes = list(metadata.get("thing_classes", []))
    if len(classes) != 1 or classes[0] not in PERSON_CATEGORY_NAMES:
        raise ValueError(
            f"Dataset {dataset_name!r} (evaluator_type 'coco') has classes {classes}: hkd_d2 evaluates "
            f"one-class person data (a category named one of {list(PERSON_CATEGORY_NAMES)}); use "
            "detectron2.evaluation.COCOEvaluator for other data"
        )
    if metadata.get("protocol") is None:
        logger.info("%s: no 'protocol' in its metadata; evaluating with %r", dataset_name, DEFAULT_PROTOCOL)
        metadata.set(protocol=DEFAULT_PROTOCOL)
    return miss_rate(cfg, dataset_name, output_dir)


def build_evaluator(cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluator:
    """The evaluator named by ``MetadataCatalog.get(dataset_name).evaluator_type``."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type is None:
        raise ValueError(f"Dataset {dataset_name!r} has no 'evaluator_type' in its metadata")
    if evaluator_type not in EVALUATOR_REGISTRY:
        raise KeyError(
            f"No evaluator registered for evaluator_type {evaluator_type!r} of dataset {dataset_name!r}; "
            f"registered: {sorted(name for name, _ in EVALUATOR_REGISTRY)}"
        )
    return EVALUATOR_REGISTRY.get(evaluator_type)(cfg, dataset_name, output_dir)

"""Export the student of a distillation run: a plain detector, TorchScript, ONNX (fp32, int8).

Formats (``EXPORT_FORMATS``, any subset; :func:`format_names`):

* ``"pytorch"``: ``student.pth`` (exactly the student detector's keys; distillation-only
  parameters such as channel adapters and an online teacher are dropped) + ``student.yaml``, a plain
  ``GeneralizedRCNN`` config without the teacher/distillation/export keys, with
  ``MODEL.WEIGHTS: student.pth`` (relative to the YAML) and the deployment threshold
  ``EXPORT.SCORE_THRESH_TEST`` as ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``. Load it with
  :func:`load_student_config`, or with Detectron2 alone (see docs/deployment.md)::

      import hkd_d2
      cfg = hkd_d2.export.load_student_config("student/student.yaml")
      predictor = DefaultPredictor(cfg)

* ``"torchscript"``: ``student.ts``, :class:`DetectorGraph` scripted with
  ``detectron2.export.scripting_with_instances`` (control flow kept, any input size);
* ``"onnx"``: ``student.onnx``, :class:`DetectorGraph` traced by ``torch.onnx.export``
  (``dynamo=False``, opset ``>= MIN_ONNX_OPSET`` for aligned RoIAlign) with dynamic H and W and
  per-image proposal counts (``detectron2.export.torchscript_patch.patch_builtin_len``);
  optionally ``student.int8.onnx`` (:func:`quantize_onnx`, ONNX Runtime static quantization).

Graph files carry :class:`~hkd_d2.deploy.ExportMetadata`; run them with
:class:`~hkd_d2.deploy.DeployedPredictor`. Written files are mode ``FILE_MODE``.
"""
import logging
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.export import scripting_with_instances
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.registry import Registry
from torch import nn

from . import __version__
from .atomic import atomic_output
from .config import add_hkd_config
from .deploy import EXPORT_FORMAT_VERSION, GRAPH_INPUT, GRAPH_OUTPUTS, METADATA_KEY, ExportMetadata
from .engine.setup import load_config
from .modeling.distiller import DISTILL_ONLY_PREFIXES, distill_only_prefixes, training_architecture

__all__ = [
    "EXPORT_FORMATS",
    "DetectorGraph",
    "export_onnx",
    "export_pytorch",
    "export_student",
    "export_formats",
    "export_torchscript",
    "format_names",
    "load_student",
    "load_student_config",
    "quantize_onnx",
    "student_config",
    "student_state_dict",
    "student_weights",
]

logger = logging.getLogger(__name__)

STUDENT_WEIGHTS = "student.pth"
STUDENT_CONFIG = "student.yaml"
TORCHSCRIPT_FILE = "student.ts"
ONNX_FILE = "student.onnx"
INT8_FILE = "student.int8.onnx"
# Permissions of every written file (Detectron2's outputs are 0644; mkstemp gives 0600).
FILE_MODE = 0o644
# Opset 16 is the first whose RoiAlign has the aligned (half-pixel) mode of ROIAlignV2; with
# Detectron2's stable opset 11 the exported boxes silently differ.
MIN_ONNX_OPSET = 16
ONNX_OPSET = 17
# Keys of the distillation config that the plain student config leaves out.
TRAINING_ONLY_KEYS = (("MODEL", "TEACHER"), ("MODEL", "DISTILL"), ("MODEL", "PCL"), ("EXPORT",))
# Instances fields used inside GeneralizedRCNN inference (scripting needs them declared).
INSTANCES_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
}

EXPORT_FORMATS = Registry("EXPORT_FORMAT")
EXPORT_FORMATS.__doc__ = """
Export formats: the function writing format ``<name>`` is registered as ``export_<name>``. Each is
``fn(cfg, model, state, out: Path, **options) -> Dict[str, str]`` (``cfg``: the student config;
``model``: the student GeneralizedRCNN, eval mode, CPU, weights loaded; ``state``: its state dict)
and returns {artifact name: written path}.
"""
# Registered name of an export function = this prefix + the format's name.
FORMAT_PREFIX = "export_"


def format_names() -> List[str]:
    """The names of the registered export formats ("onnx", "pytorch", "torchscript", ...)."""
    return sorted(name[len(FORMAT_PREFIX):] for name, _ in EXPORT_FORMATS if name.startswith(FORMAT_PREFIX))


def student_config(cfg: CfgNode) -> CfgNode:
    """The distiller's config turned into the student detector's (teacher/distill keys reset, then
    what the distiller deploys: :meth:`~hkd_d2.modeling.Distiller.deployed_config`)."""
    defaults = add_hkd_config(get_cfg())
    student = cfg.clone()
    student.defrost()
    student.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    student.MODEL.TEACHER = defaults.MODEL.TEACHER.clone()
    student.MODEL.DISTILL = defaults.MODEL.DISTILL.clone()
    return training_architecture(cfg).deployed_config(student)


def student_weights(cfg: CfgNode, checkpoint: Dict, source: str) -> Dict[str, torch.Tensor]:
    """The deployed student's entries of a training checkpoint of ``cfg`` (a ``{"model": state, ...}``
    dict or a bare state dict; ``source`` names it in errors), distillation-only keys included:
    :meth:`~hkd_d2.modeling.Distiller.deployed_weights` of ``cfg``'s meta-architecture."""
    checkpoint = checkpoint if "model" in checkpoint else {"model": checkpoint}
    return training_architecture(cfg).deployed_weights(cfg, checkpoint, source)


def student_state_dict(
    state: Dict[str, torch.Tensor], expected_keys, source: str, dropped: Sequence[str] = DISTILL_ONLY_PREFIXES
) -> Dict[str, torch.Tensor]:
    """Keep the ``expected_keys`` of ``state``; drop the distillation-only keys (prefixes ``dropped``,
    :func:`~hkd_d2.modeling.distiller.distill_only_prefixes` of the run's config); raise naming
    ``source`` on any other extra key or on a missing one."""
    kept = {k: v for k, v in state.items() if not k.startswith(tuple(dropped))}
    missing = sorted(set(expected_keys) - set(kept))
    unexpected = sorted(set(kept) - set(expected_keys))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not hold the student of this config: missing {missing}, unexpected {unexpected}"
        )
    return kept


def load_student(cfg: CfgNode, weights: str) -> Tuple[CfgNode, nn.Module, Dict[str, torch.Tensor]]:
    """The student config, the student detector (eval, CPU) with the weights of ``weights`` (a
    checkpoint of ``cfg``), and its state dict. Raises naming the file when it is missing or
    holds another model."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Distillation checkpoint not found: {weights}")
    student_cfg = student_config(cfg)
    student_cfg.MODEL.DEVICE = "cpu"
    model = build_model(student_cfg)
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = student_state_dict(student_weights(cfg, checkpoint, weights), model.state_dict().keys(), weights,
                               distill_only_prefixes(cfg))
    model.load_state_dict(state, strict=True)
    return student_cfg, model.eval(), state


def _finish(path: Path) -> str:
    os.chmod(path, FILE_MODE)
    return str(path)


def deploy_config(student_cfg: CfgNode, deploy_threshold: float) -> CfgNode:
    """``student_cfg`` as written to ``student.yaml``: training-only keys removed, deployment
    score threshold, weights next to the YAML."""
    cfg = student_cfg.clone()
    for *parents, key in TRAINING_ONLY_KEYS:
        node = cfg
        for name in parents:
            node = node[name]
        node.pop(key, None)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = deploy_threshold
    cfg.MODEL.WEIGHTS = STUDENT_WEIGHTS
    return cfg


@EXPORT_FORMATS.register()
def export_pytorch(cfg: CfgNode, model: nn.Module, state: Dict[str, torch.Tensor], out: Path, **_) -> Dict[str, str]:
    """``student.pth`` + ``student.yaml``."""
    weights_path, config_path = out / STUDENT_WEIGHTS, out / STUDENT_CONFIG
    with atomic_output(weights_path) as tmp:
        torch.save({"model": state}, tmp)
    with atomic_output(config_path) as tmp:
        tmp.write_text(deploy_config(cfg, cfg.EXPORT.SCORE_THRESH_TEST).dump())
    return {"weights": _finish(weights_path), "config": _finish(config_path)}


def load_student_config(config_file: str, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Load an exported ``student.yaml`` (hkd keys at their defaults); a relative
    ``MODEL.WEIGHTS`` is taken relative to the YAML's folder when the file is there."""
    cfg = load_config(config_file, opts)
    weights = os.path.join(os.path.dirname(os.path.abspath(config_file)), cfg.MODEL.WEIGHTS)
    if cfg.MODEL.WEIGHTS and not os.path.isabs(cfg.MODEL.WEIGHTS) and os.path.isfile(weights):
        cfg.MODEL.WEIGHTS = weights
    return cfg


class DetectorGraph(nn.Module):
    """The exported graph: a ``GeneralizedRCNN`` on one image, without the final resize.

    ``forward(image Tensor (3, H, W) float32, INPUT.FORMAT)`` -> ``boxes (R, 4)`` XYXY in
    that image's coordinates, ``scores (R,)``, ``classes (R,)`` int64: the box head's
    inference (its score threshold, NMS, ``DETECTIONS_PER_IMAGE``) with normalisation and
    padding inside.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        instances = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def export_metadata(cfg: CfgNode, fmt: str, int8: bool = False) -> ExportMetadata:
    return ExportMetadata(
        format_version=EXPORT_FORMAT_VERSION,
        hkd_d2_version=__version__,
        format=fmt,
        int8=int8,
        input_format=cfg.INPUT.FORMAT,
        min_size_test=cfg.INPUT.MIN_SIZE_TEST,
        max_size_test=cfg.INPUT.MAX_SIZE_TEST,
        graph_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        score_thresh=cfg.EXPORT.SCORE_THRESH_TEST,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
    )


def _sample_image(cfg: CfgNode) -> torch.Tensor:
    """A random ``(3, MIN_SIZE_TEST, MAX_SIZE_TEST)`` input to trace with (H, W stay dynamic)."""
    generator = torch.Generator().manual_seed(0)
    size = (3, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return torch.randint(0, 256, size, generator=generator).float()


@EXPORT_FORMATS.register()
def export_torchscript(cfg: CfgNode, model: nn.Module, state, out: Path, **_) -> Dict[str, str]:
    """``student.ts``: the scripted :class:`DetectorGraph`."""
    scripted = scripting_with_instances(DetectorGraph(model).eval(), INSTANCES_FIELDS)
    path = out / TORCHSCRIPT_FILE
    with atomic_output(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={f"{METADATA_KEY}.json": export_metadata(cfg, "torchscript").to_json()})
    return {"torchscript": _finish(path)}


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package, which is not installed: pip install -e .[deploy]") from None
    return onnx


def _stamp_onnx(path: Path, meta: ExportMetadata) -> None:
    """Write ``meta`` into the ONNX file's ``metadata_props``."""
    onnx = _import_onnx()
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: meta.to_json()})
    onnx.save(proto, str(path))


@EXPORT_FORMATS.register()
def export_onnx(cfg: CfgNode, model: nn.Module, state, out: Path, opset: int = ONNX_OPSET,
         calibration: Optional[Callable[[], Iterable[np.ndarray]]] = None, **_) -> Dict[str, str]:
    """``student.onnx`` (traced :class:`DetectorGraph`; H, W and the proposal and detection counts
    dynamic); with ``calibration`` (a callable yielding graph inputs), ``student.int8.onnx`` too."""
    if opset < MIN_ONNX_OPSET:
        raise ValueError(f"ONNX opset {opset} has no aligned RoIAlign: use opset >= {MIN_ONNX_OPSET}")
    _import_onnx()
    path = out / ONNX_FILE
    dynamic = {GRAPH_INPUT: {1: "height", 2: "width"}, **{name: {0: "detections"} for name in GRAPH_OUTPUTS}}
    # Under patch_builtin_len, the box head's len(proposals) is traced as a shape, not a constant:
    # without it, the traced image's proposal count is baked into the graph's Split of the
    # predictions, which then fails or misreads on an image with another count.
    with atomic_output(path) as tmp, torch.no_grad(), patch_builtin_len():
        torch.onnx.export(DetectorGraph(model).eval(), (_sample_image(cfg),), str(tmp), dynamo=False,
                          opset_version=opset, input_names=[GRAPH_INPUT], output_names=list(GRAPH_OUTPUTS),
                          dynamic_axes=dynamic)
        _stamp_onnx(tmp, export_metadata(cfg, "onnx"))
    written = {"onnx": _finish(path)}
    if calibration is not None:
        int8_path = out / INT8_FILE
        with atomic_output(int8_path) as tmp:
            quantize_onnx(path, tmp, calibration())
            _stamp_onnx(tmp, export_metadata(cfg, "onnx", int8=True))
        written["onnx_int8"] = _finish(int8_path)
    return written


# Ops given int8 weights and activations; the rest (RoiAlign, NMS, TopK, box decoding) stay fp32.
INT8_OPS = ("Conv", "Gemm", "MatMul")


def quantize_onnx(fp32_path: os.PathLike, int8_path: os.PathLike, images: Iterable[np.ndarray]) -> None:
    """ONNX Runtime static quantization of ``fp32_path`` into ``int8_path``: QDQ format, int8
    per-channel weights, uint8 activations whose ranges are calibrated (min-max) on ``images``
    (graph inputs, ``(3, H, W)`` float32)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise ImportError("int8 export needs ONNX Runtime, which is not installed: pip install -e .[deploy]") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.inputs = iter({GRAPH_INPUT: np.ascontiguousarray(x, dtype=np.float32)} for x in images)

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self.inputs, None)

    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(INT8_OPS), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def export_formats(cfg: CfgNode, weights: str, out_dir: str, formats: Sequence[str] = ("pytorch",),
                   **options) -> Dict[str, str]:
    """Export the student trained under ``cfg`` (checkpoint ``weights``) in ``formats``.

    Args:
        cfg: the distillation (or plain student) config.
        weights: a checkpoint written by the trainer for that config (``model_final.pth``).
        out_dir: output folder (created).
        formats: format names (:func:`format_names`).
        options: passed to every format (``opset``, ``calibration`` for int8 ONNX).

    Returns:
        {artifact: path}: ``weights``/``config`` (pytorch), ``torchscript``, ``onnx``, ``onnx_int8``.
    """
    unknown = [f for f in formats if f not in format_names()]
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {format_names()}")
    student_cfg, model, state = load_student(cfg, weights)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, str] = {}
    for fmt in formats:
        written.update(EXPORT_FORMATS.get(FORMAT_PREFIX + fmt)(student_cfg, model, state, out, **options))
    for name, path in written.items():
        logger.info(f"Exported {name}: {path}")
    return written


def export_student(cfg: CfgNode, weights: str, out_dir: str) -> Tuple[str, str]:
    """Write ``student.pth`` and ``student.yaml`` for the student trained under ``cfg``;
    return their paths (the ``"pytorch"`` format of :func:`export_formats`)."""
    written = export_formats(cfg, weights, out_dir, ("pytorch",))
    return written["weights"], written["config"]


def calibration_images(records: List[Dict], count: int,
                       preprocess: Callable[[np.ndarray], torch.Tensor]) -> Callable[[], Iterable[np.ndarray]]:
    """A callable yielding ``count`` graph inputs: records (Detectron2 dicts with ``file_name``)
    evenly spaced over ``records``, read as BGR and passed through ``preprocess`` (e.g.
    :meth:`~hkd_d2.deploy.DeployedPredictor.preprocess`)."""
    if count < 1 or not records:
        raise ValueError(f"int8 calibration needs at least one image (got {count} of {len(records)} records)")
    picks = np.linspace(0, len(records) - 1, min(count, len(records))).round().astype(int)

    def images():
        for i in picks:
            yield preprocess(read_image(records[i]["file_name"], format="BGR")).numpy()

    return images

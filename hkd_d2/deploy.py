"""Run an exported student (TorchScript or ONNX) as :class:`DefaultPredictor` runs a detector.

An exported graph (see :mod:`hkd_d2.export`) maps one image, ``Tensor (3, H, W)`` float32 in
the config's ``INPUT.FORMAT``, already resized, to its detections in that input's coordinates:
``boxes (R, 4)`` (XYXY), ``scores (R,)``, ``classes (R,)`` int64, after the box head's score
threshold (the training config's ``SCORE_THRESH_TEST``), NMS and ``DETECTIONS_PER_IMAGE``.
Normalisation and padding are inside the graph; H and W are free (any size). The file carries
:class:`ExportMetadata` (resize, input format, thresholds, a format version).

:class:`RuntimeOptions` are deploy-time settings of the runtime that runs a file (ONNX Runtime
session options, TorchScript freezing), read from a config's ``EXPORT.RUNTIME`` keys; their
defaults leave each runtime as it is.

:class:`DeployedPredictor` adds what the graph leaves out, as Detectron2 does: the resize by
``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``, the deployment score threshold, and the boxes scaled
to the original image. Its ``.model`` (:class:`ExportedModel`) takes Detectron2's batched
inputs, so ``inference_on_dataset`` and the miss-rate evaluator run it like a model.
"""
import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "METADATA_KEY",
    "RUNTIMES",
    "ExportMetadata",
    "ExportedModel",
    "DeployedPredictor",
    "RuntimeOptions",
    "load_runtime",
    "onnx_session",
    "onnx_session_options",
]

# Version of the exported files' contract (inputs, outputs, metadata); a file of another
# version is refused. Bump it when that contract changes.
EXPORT_FORMAT_VERSION = 1
# Name of the metadata entry (ONNX metadata_props key; TorchScript extra file "<key>.json").
METADATA_KEY = "hkd_d2"
GRAPH_INPUT = "image"
GRAPH_OUTPUTS = ("boxes", "scores", "classes")

# A runtime: image (3, H, W) float32 -> boxes (R, 4), scores (R,), classes (R,) as CPU tensors.
Runtime = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ExportMetadata:
    """What a runner needs besides the graph; stored in the exported file."""

    format_version: int
    hkd_d2_version: str
    # "torchscript" or "onnx" (the graph's runtime), and whether weights are int8.
    format: str
    int8: bool
    input_format: str
    min_size_test: int
    max_size_test: int
    # Threshold applied inside the graph (the training config's SCORE_THRESH_TEST): the lowest
    # score a runner can see, the one to evaluate miss rates with.
    graph_score_thresh: float
    # Default threshold of DeployedPredictor (EXPORT.SCORE_THRESH_TEST).
    score_thresh: float
    num_classes: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "ExportMetadata":
        """Parse the stored metadata; refuse a file without it or of another format version."""
        if not text:
            raise ValueError(f"{source} holds no {METADATA_KEY} metadata: not exported by tools/export_student.py")
        fields = json.loads(text)
        version = fields.get("format_version")
        if version != EXPORT_FORMAT_VERSION:
            raise ValueError(
                f"{source} was exported with format version {version} (hkd_d2 {fields.get('hkd_d2_version')}); "
                f"this hkd_d2 reads version {EXPORT_FORMAT_VERSION}: export it again with tools/export_student.py"
            )
        try:
            return cls(**fields)
        except TypeError as e:
            raise ValueError(f"{source}: malformed {METADATA_KEY} metadata ({e})") from None


# EXPORT.RUNTIME.GRAPH_OPTIMIZATION_LEVEL -> name in onnxruntime.GraphOptimizationLevel.
GRAPH_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# ONNX Runtime session config entry of spinning worker threads.
ALLOW_SPINNING_ENTRY = "session.intra_op.allow_spinning"


@dataclass(frozen=True)
class RuntimeOptions:
    """Deploy-time settings of the runtimes (config ``EXPORT.RUNTIME.*``); the defaults are each
    runtime's own behaviour. None of them changes what is computed, only how."""

    # ONNX Runtime: graph optimisation level, a key of GRAPH_OPTIMIZATION_LEVELS.
    graph_optimization_level: str = "all"
    # ONNX Runtime: threads per operator (0 = its default).
    intra_op_threads: int = 0
    # ONNX Runtime: worker threads busy-wait between operators.
    allow_spinning: bool = True
    # TorchScript: torch.jit.freeze the loaded module.
    torchscript_freeze: bool = False

    def __post_init__(self):
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"EXPORT.RUNTIME.GRAPH_OPTIMIZATION_LEVEL {self.graph_optimization_level!r} is not one of "
                f"{sorted(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        if self.intra_op_threads < 0:
            raise ValueError(f"EXPORT.RUNTIME.INTRA_OP_THREADS must be >= 0 (0 = default), got {self.intra_op_threads}")

    @classmethod
    def from_config(cls, cfg) -> "RuntimeOptions":
        """The options of ``cfg.EXPORT.RUNTIME``."""
        node = cfg.EXPORT.RUNTIME
        return cls(
            graph_optimization_level=node.GRAPH_OPTIMIZATION_LEVEL,
            intra_op_threads=node.INTRA_OP_THREADS,
            allow_spinning=node.ALLOW_SPINNING,
            torchscript_freeze=node.TORCHSCRIPT_FREEZE,
        )


def _torchscript_runtime(path: str, device: str, options: RuntimeOptions) -> Tuple[Runtime, str]:
    extra = {f"{METADATA_KEY}.json": ""}
    # Scripted in eval mode with ``training`` frozen to a constant (it cannot be set again).
    module = torch.jit.load(path, map_location=device, _extra_files=extra)
    if options.torchscript_freeze:
        # (torch.jit.optimize_for_inference cannot follow: it sets ``training``, a constant here.)
        module = torch.jit.freeze(module)

    @torch.no_grad()
    def run(image: torch.Tensor):
        boxes, scores, classes = module(image.to(device))
        return boxes.cpu(), scores.cpu(), classes.cpu()

    return run, extra[f"{METADATA_KEY}.json"]


def _onnx_providers(device: str, available: List[str]) -> List[str]:
    """ONNX Runtime providers for ``device``: CUDA first where it is present, CPU always."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _import_onnxruntime(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            f"Running {path} needs ONNX Runtime, which is not installed: pip install -e .[deploy]"
        ) from None
    return ort


def onnx_session_options(options: RuntimeOptions):
    """``onnxruntime.SessionOptions`` of ``options`` (graph optimisation level, intra-op threads,
    spinning)."""
    ort = _import_onnxruntime("an ONNX model")
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[options.graph_optimization_level]
    )
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.add_session_config_entry(ALLOW_SPINNING_ENTRY, "1" if options.allow_spinning else "0")
    return session_options


def onnx_session(path: str, device: str = "cpu", options: Optional[RuntimeOptions] = None,
                 profile_prefix: Optional[str] = None):
    """An ``onnxruntime.InferenceSession`` of ``path`` on ``device``, set up by ``options``
    (default :class:`RuntimeOptions`); with ``profile_prefix``, ONNX Runtime's profiler on, its
    JSON trace written to ``<profile_prefix>_<date>.json`` by ``session.end_profiling()``."""
    ort = _import_onnxruntime(path)
    session_options = onnx_session_options(options or RuntimeOptions())
    if profile_prefix is not None:
        session_options.enable_profiling = True
        session_options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, sess_options=session_options,
                                providers=_onnx_providers(device, ort.get_available_providers()))


def _onnx_runtime(path: str, device: str, options: RuntimeOptions) -> Tuple[Runtime, str]:
    session = onnx_session(path, device, options)
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")

    def run(image: torch.Tensor):
        outputs = session.run(list(GRAPH_OUTPUTS), {GRAPH_INPUT: image.cpu().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)

    return run, text


# File suffix -> loader(path, device, options) -> (runtime, metadata JSON).
RUNTIMES: Dict[str, Callable[[str, str, RuntimeOptions], Tuple[Runtime, str]]] = {
    ".ts": _torchscript_runtime,
    ".onnx": _onnx_runtime,
}


def load_runtime(
    path: str, device: str = "cpu", options: Optional[RuntimeOptions] = None
) -> Tuple[Runtime, ExportMetadata]:
    """The runtime for an exported file (chosen by suffix, set up with ``options``, default
    :class:`RuntimeOptions`) and its checked metadata."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Exported model not found: {path}")
    suffix = os.path.splitext(path)[1]
    if suffix not in RUNTIMES:
        raise ValueError(f"{path}: unknown exported model type {suffix!r}; expected one of {sorted(RUNTIMES)}")
    runtime, text = RUNTIMES[suffix](path, device, options or RuntimeOptions())
    return runtime, ExportMetadata.from_json(text, path)


class ExportedModel(nn.Module):
    """An exported graph behind Detectron2's model interface (inference only).

    ``forward(batched_inputs)``: a list of dicts with ``"image"`` ``Tensor (3, h, w)`` (resized,
    in ``INPUT.FORMAT``, any dtype) and optionally the original ``"height"``/``"width"``;
    returns one ``{"instances": Instances}`` per input, boxes in original image coordinates,
    scores above ``score_threshold``, as ``GeneralizedRCNN`` in eval mode returns them.
    """

    def __init__(self, runtime: Runtime, score_threshold: float):
        super().__init__()
        self.runtime = runtime
        self.score_threshold = score_threshold

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        results = []
        for x in batched_inputs:
            image = x["image"].float()
            h, w = image.shape[-2:]
            boxes, scores, classes = self.runtime(image)
            # Detectron2 keeps scores > SCORE_THRESH_TEST before NMS; keeping them after it gives
            # the same boxes, since NMS only removes a box in favour of a higher-scoring one.
            keep = scores > self.score_threshold
            instances = Instances((h, w), pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=classes[keep])
            results.append({"instances": detector_postprocess(instances, x.get("height", h), x.get("width", w))})
        return results


class DeployedPredictor:
    """:class:`DefaultPredictor` for an exported file (``.ts`` TorchScript, ``.onnx`` ONNX Runtime).

    ``predictor(image_bgr (H, W, 3) uint8) -> {"instances": Instances}`` with ``pred_boxes``
    (original image coordinates), ``scores`` and ``pred_classes``, from the same resize,
    normalisation, threshold and NMS as the PyTorch detector. Attributes as DefaultPredictor's:
    ``model`` (:class:`ExportedModel`), ``aug``, ``input_format``, plus ``export_metadata``.
    """

    def __init__(self, path: str, score_threshold: Optional[float] = None, device: str = "cpu",
                 options: Optional[RuntimeOptions] = None):
        """
        Args:
            path: exported file written by ``tools/export_student.py``.
            score_threshold: keep detections scoring above it (default: the file's deployment
                threshold; below the graph's own threshold nothing more appears).
            device: "cpu" or "cuda" (TorchScript on that device; ONNX Runtime's CUDA provider
                where installed, else CPU).
            options: deploy-time runtime settings (default: each runtime's own behaviour;
                ``RuntimeOptions.from_config(cfg)`` reads them from ``EXPORT.RUNTIME``).
        """
        runtime, self.export_metadata = load_runtime(path, device, options)
        meta = self.export_metadata
        threshold = meta.score_thresh if score_threshold is None else score_threshold
        self.model = ExportedModel(runtime, threshold)
        self.input_format = meta.input_format
        self.aug = T.ResizeShortestEdge([meta.min_size_test, meta.min_size_test], meta.max_size_test)

    def preprocess(self, original_image: np.ndarray) -> torch.Tensor:
        """BGR ``(H, W, 3)`` image -> the graph's input ``Tensor (3, h, w)`` float32."""
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        height, width = original_image.shape[:2]
        inputs = {"image": self.preprocess(original_image), "height": height, "width": width}
        return self.model([inputs])[0]

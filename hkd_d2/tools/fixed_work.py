"""Randomly initialised detectors that do a trained detector's work, for timing them.

Benchmarks build their detectors with random weights (nothing is trained for them), but a random
Faster R-CNN does not cost what a trained one does:

* the number of RoIs the box head runs on, and of boxes post-processed, follows the scores: with
  random weights it differs between teacher and student and from run to run. A random R50
  (FrozenBatchNorm left at identity, He-initialised convolutions) grows its activations by orders
  of magnitude over its 16 residual blocks, its RPN box deltas push the proposals off the image,
  and the teacher ends up with a handful of RoIs where the student has ``POST_NMS_TOPK_TEST``: the
  teacher then looks barely slower than the student;
* every bias starts at zero, and the ONNX exporter merges equal initializers into one shared
  tensor: ONNX Runtime's int8 convolutions whose bias is such a shared tensor are not fused into
  integer kernels and run in fp32 between quantize/dequantize pairs, which a trained student's
  (distinct biases) do not.

Two benchmark-only changes remove both, for teacher and student alike:

* :data:`FIXED_WORK_OPTS` (config): no proposal and no detection is suppressed or dropped by its
  score, so the RPN keeps exactly ``min(POST_NMS_TOPK_TEST, candidates)`` proposals (candidates:
  ``PRE_NMS_TOPK_TEST`` per level, fewer only on images too small to have that many anchors) and
  the box head returns exactly ``TEST.DETECTIONS_PER_IMAGE`` boxes. NMS itself still runs, with
  the most work (no box is suppressed, so none is skipped);
* :func:`trained_like_weights`: FrozenBatchNorm statistics measured on an image, as a pretrained
  backbone's are (each channel normalised, then a random scale and shift), and random non-zero
  biases on every convolution and linear layer, and box regressors (RPN anchor deltas, box-head
  deltas) scaled down so that boxes stay about where their anchors are (a box pushed off the image
  is dropped). Activations stay of the order of 1; the compute graph and every tensor shape are
  unchanged.

A trained detector's proposal count is ``POST_NMS_TOPK_TEST`` on every image large enough
(its RPN NMS rarely leaves fewer), and its detection count is at most ``DETECTIONS_PER_IMAGE``:
fixed work is its usual (proposals) or largest (detections) work.
"""
from typing import Dict, List

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["FIXED_WORK_OPTS", "trained_like_weights", "work_counts"]

# Config overrides (KEY, VALUE, ...) of fixed work: NMS thresholds of 1 suppress nothing (IoU <= 1),
# a score threshold of -1 drops no class score (scores are >= 0).
FIXED_WORK_OPTS = (
    "MODEL.RPN.NMS_THRESH", "1.0",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "-1.0",
)
# Spread of the random FrozenBatchNorm scales and shifts, and of the layer biases.
BN_SCALE_RANGE = (0.5, 1.0)
BN_SHIFT_STD = 0.1
BIAS_STD = 0.01
# Factor on the box regressors' weights: their deltas stay near 0, so no box leaves the image.
REGRESSOR_WEIGHT_SCALE = 1e-3
# The box regressors of a GeneralizedRCNN: (submodule path, layer).
REGRESSORS = (("proposal_generator.rpn_head", "anchor_deltas"), ("roi_heads.box_predictor", "bbox_pred"))


def _random_biases(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(bias, torch.Tensor):
            bias.copy_(torch.randn(bias.shape, generator=generator) * BIAS_STD)


def _small_regressors(model: nn.Module) -> None:
    for path, name in REGRESSORS:
        layer = getattr(model.get_submodule(path), name)
        layer.weight.mul_(REGRESSOR_WEIGHT_SCALE)


def _measure_frozen_bn(module: FrozenBatchNorm2d, inputs, output, generator: torch.Generator) -> torch.Tensor:
    """Forward hook: set ``module``'s statistics to its input's per-channel mean and variance and
    draw its scale and shift; return the recomputed output, so later layers see it."""
    x = inputs[0]
    channels = x.shape[1]
    low, high = BN_SCALE_RANGE
    module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    module.running_var.copy_(x.var(dim=(0, 2, 3)))
    module.weight.copy_(low + (high - low) * torch.rand(channels, generator=generator))
    module.bias.copy_(torch.randn(channels, generator=generator) * BN_SHIFT_STD)
    return module.forward(x)


@torch.no_grad()
def trained_like_weights(model: nn.Module, batched_inputs: List[Dict], seed: int = 0) -> nn.Module:
    """Give a randomly initialised detector trained-like statistics (see the module docstring):
    random non-zero layer biases, small box regressors, and FrozenBatchNorm statistics measured on
    ``batched_inputs`` (Detectron2 inputs, e.g. one image) by one backbone forward. In place;
    returns ``model``."""
    generator = torch.Generator().manual_seed(seed)
    _random_biases(model, generator)
    _small_regressors(model)
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_hook(lambda m, i, o: _measure_frozen_bn(m, i, o, generator)) for m in norms]
    try:
        was_training = model.training
        model.eval()
        model.backbone(model.preprocess_image(batched_inputs).tensor)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return model


def work_counts(model: nn.Module, batched_inputs: List[Dict]) -> Dict[str, int]:
    """Proposals the box head ran on and detections returned by one inference of ``model``
    (a ``GeneralizedRCNN`` in eval mode), summed over the batch."""
    seen: Dict[str, int] = {}

    def count(_module, args):
        seen["proposals"] = sum(len(p) for p in args[2])

    handle = model.roi_heads.register_forward_pre_hook(count)
    try:
        with torch.no_grad():
            outputs = model(batched_inputs)
    finally:
        handle.remove()
    return {"proposals": seen["proposals"], "detections": sum(len(o["instances"]) for o in outputs)}

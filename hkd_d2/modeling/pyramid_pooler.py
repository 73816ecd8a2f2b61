"""Box-head RoI poolers, chosen by name from ``MODEL.ROI_BOX_HEAD.POOLER_NAME``.

* ``"LevelROIPooler"``: Detectron2's :class:`ROIPooler`; each RoI is pooled from the one FPN
  level its size assigns it to (FPN paper, eqn. 1).
* ``"PyRoIAlign"``: the paper's pyramid RoIAlign; each RoI is pooled from *every* level
  and the levels are fused by a learned 1x1 convolution.

Both map ``features: List[Tensor (N, C, H_l, W_l)]`` and ``boxes: List[Boxes]`` (one per
image, R boxes in all, image coordinates) to ``Tensor (R, C, S, S)``, so the box head after
them does not change.
"""
from typing import Dict, List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["ROI_POOLER_REGISTRY", "FUSE_INITS", "build_box_pooler", "LevelROIPooler", "PyRoIAlign"]

ROI_POOLER_REGISTRY = Registry("ROI_POOLER")
ROI_POOLER_REGISTRY.__doc__ = """
Registry for box-head RoI poolers. A registered class is built as ``cls(cfg, input_shape)``
(``input_shape``: Dict[str, ShapeSpec] of the backbone) and called as
``pooler(features: List[Tensor (N, C, H_l, W_l)], boxes: List[Boxes]) -> Tensor (R, C, S, S)``.
"""


def _pooler_geometry(cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
    """Constructor arguments shared by every box pooler, read from ``MODEL.ROI_BOX_HEAD``."""
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    return {
        "output_size": cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
        "scales": tuple(1.0 / input_shape[f].stride for f in in_features),
        "sampling_ratio": cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        "pooler_type": cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
    }


@ROI_POOLER_REGISTRY.register()
class LevelROIPooler(ROIPooler):
    """Detectron2's level-assigned :class:`ROIPooler`, constructible from a config.

    Output: ``Tensor (R, C, S, S)``, each RoI pooled from the single level its size maps to.
    It has no parameters, so checkpoints are those of a plain Detectron2 model.
    """

    @configurable
    def __init__(self, **kwargs):
        """Arguments are those of :class:`ROIPooler`."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        return _pooler_geometry(cfg, input_shape)


def _mean_over_levels_fill(conv: nn.Conv2d, num_levels: int) -> None:
    """Weights of a 1x1 conv (C, L*C) so that output channel c = mean over l of input l*C + c."""
    channels = conv.out_channels
    with torch.no_grad():
        eye = torch.eye(channels, dtype=conv.weight.dtype) / num_levels
        conv.weight.copy_(eye.repeat(1, num_levels).view(channels, num_levels * channels, 1, 1))
        conv.bias.zero_()


# Initialisations of PyRoIAlign's fusion conv: name -> fn(conv, num_levels).
FUSE_INITS = {
    "msra": lambda conv, num_levels: weight_init.c2_msra_fill(conv),
    "mean": _mean_over_levels_fill,
}


@ROI_POOLER_REGISTRY.register()
class PyRoIAlign(ROIPooler):
    """Pyramid RoIAlign (Chen et al., ICIP 2019): pool every RoI from all L levels, then fuse.

    For R RoIs and L levels of C channels each::

        level l:  RoIAlign(features[l], boxes, scale_l)   -> (R, C, S, S)
        concat over the L levels                           -> (R, L*C, S, S)
        1x1 conv (L*C -> C), optional ReLU                 -> (R, C, S, S)

    The RoIAlign ops are Detectron2's (``pooler_type``, default ``"ROIAlignV2"``, i.e.
    ``aligned=True``). The 1x1 fusion conv is a parameter of the box head (it lives in
    ``roi_heads.box_pooler.fuse``) and is trained with it. Its initialisation is
    ``fuse_init`` (a name in ``FUSE_INITS``): ``"msra"``, He normal (fan-out, zero bias) as
    Detectron2 initialises the ReLU convolutions of its box heads, gives fused features of
    about 2x the RMS of one level at the start (a random mix of the L*C channels);
    ``"mean"`` starts the fusion as the mean over the levels, channel by channel (weights
    1/L, zero bias), so the box head first sees what an averaging pooler gives.
    """

    @configurable
    def __init__(
        self,
        output_size: int,
        scales: Sequence[float],
        sampling_ratio: int,
        in_channels: int,
        pooler_type: str = "ROIAlignV2",
        fuse_relu: bool = True,
        fuse_init: str = "msra",
    ):
        """
        Args:
            output_size: side S of the pooled square.
            scales: 1 / stride of each input level, finest first (a factor-2 pyramid).
            sampling_ratio: RoIAlign samples per output bin side (0 = adaptive).
            in_channels: channels C of every level; also the output channels.
            pooler_type: Detectron2 pooling op applied at each level.
            fuse_relu: apply ReLU after the 1x1 fusion conv.
            fuse_init: initialisation of the fusion conv, a key of ``FUSE_INITS``.
        """
        super().__init__(output_size, scales, sampling_ratio, pooler_type)
        self.fuse = Conv2d(
            len(scales) * in_channels,
            in_channels,
            kernel_size=1,
            # A module, not F.relu: a function held as an attribute cannot be scripted.
            activation=nn.ReLU() if fuse_relu else None,
        )
        if fuse_init not in FUSE_INITS:
            raise ValueError(f"PyRoIAlign: unknown fuse_init '{fuse_init}', expected one of {sorted(FUSE_INITS)}")
        FUSE_INITS[fuse_init](self.fuse, len(scales))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        channels = {input_shape[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(
                f"PyRoIAlign needs equal channels on MODEL.ROI_HEADS.IN_FEATURES, got {channels}"
            )
        return {
            **_pooler_geometry(cfg, input_shape),
            "in_channels": channels.pop(),
            "fuse_relu": cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_RELU,
            "fuse_init": cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_INIT,
        }

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x: L feature maps, ``Tensor (N, C, H_l, W_l)``, in the order of ``scales``.
            box_lists: N ``Boxes`` (one per image) in image coordinates, R boxes in all.

        Returns:
            Tensor (R, C, S, S): fused pooled features, RoIs in the order of ``box_lists``.
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(f"PyRoIAlign expects {len(self.level_poolers)} levels, got {len(x)}")
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(f"{len(box_lists)} box lists for a batch of {x[0].shape[0]} images")
        rois = convert_boxes_to_pooler_format(box_lists)
        # enumerate over the ModuleList (not zip with x): the form TorchScript compiles.
        pooled = torch.cat([pooler(x[level], rois) for level, pooler in enumerate(self.level_poolers)], dim=1)
        return self.fuse(pooled)


def build_box_pooler(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the box-head pooler named by ``cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME``.

    Args:
        input_shape: backbone output shapes, keyed by feature name (levels are taken from
            ``cfg.MODEL.ROI_HEADS.IN_FEATURES``).
    """
    return ROI_POOLER_REGISTRY.get(cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME)(cfg, input_shape)

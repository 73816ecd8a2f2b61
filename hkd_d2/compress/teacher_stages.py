"""What the frozen teacher exposes to block-wise training: the input and output of each
bottom-up stage (the stem's output, then res2..res5), on the teacher's own preprocessed images."""
from typing import Dict, List

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling.backbone.resnet import ResNet

from ..config import add_hkd_config
from ..modeling.teacher import FrozenTeacher, build_teacher, load_teacher_config

__all__ = ["TeacherStages"]


class TeacherStages:
    """A frozen teacher detector whose bottom-up backbone is a Detectron2 ``ResNet`` (stem + res2..res5).

    Args:
        config_file: the teacher's YAML config.
        weights: its checkpoint.
        device: where it runs.
    """

    def __init__(self, config_file: str, weights: str, device: str = "cpu"):
        request = add_hkd_config(get_cfg())
        request.MODEL.DEVICE = device
        request.MODEL.TEACHER.CONFIG_FILE = config_file
        request.MODEL.TEACHER.WEIGHTS = weights
        self.cfg: CfgNode = load_teacher_config(request)
        self.teacher: FrozenTeacher = build_teacher(request)
        bottom_up = getattr(self.detector.backbone, "bottom_up", None)
        if not isinstance(bottom_up, ResNet) or len(bottom_up.stages) != 4:
            raise TypeError(f"hkd-compress needs a teacher whose backbone is an FPN over a 4-stage Detectron2 ResNet "
                            f"(MODEL.BACKBONE.NAME build_resnet_fpn_backbone); {config_file} builds "
                            f"{type(self.detector.backbone).__name__} over {type(bottom_up).__name__}")
        self.bottom_up: ResNet = bottom_up

    @property
    def detector(self) -> torch.nn.Module:
        return self.teacher.detector

    @property
    def channels(self) -> List[int]:
        """Output channels ``[stem, res2, ..., res5]``."""
        shapes = self.bottom_up.output_shape()
        return [self.bottom_up.stem.out_channels] + [shapes[name].channels for name in self.bottom_up.stage_names]

    @property
    def widths(self) -> List[int]:
        """Width of each stage's 3x3 convs (64, 128, 256, 512 for R18 and R50): the default interface."""
        return [int(stage[0].conv2.weight.shape[0]) for stage in self.bottom_up.stages]

    def images(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """The teacher's normalised, padded images (N, 3, H, W)."""
        return self.detector.preprocess_image(batched_inputs).tensor

    @torch.no_grad()
    def stage_maps(self, images: torch.Tensor) -> List[torch.Tensor]:
        """``[stem (N, C0, H/4, W/4), res2 (N, C2, H/4, W/4), ..., res5 (N, C5, H/32, W/32)]``."""
        x = self.bottom_up.stem(images)
        maps = [x]
        for stage in self.bottom_up.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def __call__(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """:meth:`stage_maps` of the teacher's preprocessing of ``batched_inputs``."""
        return self.stage_maps(self.images(batched_inputs))

"""Every config key hkd_d2 adds to Detectron2's defaults, with its default value.

Call :func:`add_hkd_config` on a ``get_cfg()`` config before merging a YAML file that
uses these keys. Each group lives in its own small function so one concept keeps one home.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_hkd_config"]


def _add_teacher_config(cfg: CN) -> None:
    cfg.MODEL.TEACHER = CN()
    # YAML config of the frozen teacher detector (its own _BASE_ chain, pixel mean/std, heads).
    cfg.MODEL.TEACHER.CONFIG_FILE = ""
    # Checkpoint of the teacher (Detectron2 .pth/.pkl); required when any distillation term is on.
    cfg.MODEL.TEACHER.WEIGHTS = ""


def _add_distill_config(cfg: CN) -> None:
    cfg.MODEL.DISTILL = CN()
    # Names of distillation terms (DISTILL_TERM_REGISTRY) to build; a term whose WEIGHT is 0 is not built.
    cfg.MODEL.DISTILL.TERMS = ["PyramidDistill", "RegionDistill", "LogitDistill"]
    # Iterations over which every distillation weight ramps linearly from 0 to its value (0 = none).
    cfg.MODEL.DISTILL.WARMUP_ITERS = 0
    # Add a trainable 1x1 conv on the student side when its channels differ from the teacher's.
    cfg.MODEL.DISTILL.ADAPT_CHANNELS = True

    cfg.MODEL.DISTILL.PYRAMID = CN()
    # lambda_PD: weight of the FPN-map MSE (paper's pyramid distillation).
    cfg.MODEL.DISTILL.PYRAMID.WEIGHT = 1.0
    # FPN levels compared by pyramid distillation.
    cfg.MODEL.DISTILL.PYRAMID.IN_FEATURES = ["p2", "p3", "p4", "p5"]

    cfg.MODEL.DISTILL.REGION = CN()
    # lambda_RD: weight of the MSE between pooled RoI features on shared RoIs.
    cfg.MODEL.DISTILL.REGION.WEIGHT = 1.0

    cfg.MODEL.DISTILL.LOGIT = CN()
    # lambda_LD: weight of the MSE between box-head class logits on shared RoIs.
    cfg.MODEL.DISTILL.LOGIT.WEIGHT = 1.0


def _add_pooler_config(cfg: CN) -> None:
    # Box-head pooler from ROI_POOLER_REGISTRY: "LevelROIPooler" (Detectron2's) or "PyRoIAlign".
    cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME = "LevelROIPooler"
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER = CN()
    # Apply ReLU after PyRoIAlign's 1x1 fusion conv.
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_RELU = True


def _add_ignore_config(cfg: CN) -> None:
    cfg.MODEL.IGNORE_REGIONS = CN()
    # Keep ignore boxes (crowds, "people", CityPersons labels 0/5) out of RPN and box-head sampling.
    cfg.MODEL.IGNORE_REGIONS.ENABLED = True
    # An anchor/proposal is ignored when this fraction of its own area lies inside an ignore box.
    cfg.MODEL.IGNORE_REGIONS.IOA_THRESHOLD = 0.5


def _add_eval_config(cfg: CN) -> None:
    cfg.TEST.MISS_RATE = CN()
    # Setups to report (empty = the protocol's standard ones).
    cfg.TEST.MISS_RATE.SETUPS = []
    # Write an MR-FPPI plot (PNG) next to the detections in OUTPUT_DIR.
    cfg.TEST.MISS_RATE.PLOT = True


def add_hkd_config(cfg: CN) -> CN:
    """Add every hkd_d2 key (with its default) to ``cfg`` in place and return it."""
    for add in (
        _add_teacher_config,
        _add_distill_config,
        _add_pooler_config,
        _add_ignore_config,
        _add_eval_config,
    ):
        add(cfg)
    return cfg

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
    # How L_PD reduces over levels: "level_sum" (sum of per-level means) or "element_mean"
    # (one mean over every element of every level, which weights P2 by its ~75% share).
    cfg.MODEL.DISTILL.PYRAMID.REDUCTION = "level_sum"

    cfg.MODEL.DISTILL.REGION = CN()
    # lambda_RD: weight of the MSE between pooled RoI features on shared RoIs.
    cfg.MODEL.DISTILL.REGION.WEIGHT = 1.0

    cfg.MODEL.DISTILL.LOGIT = CN()
    # lambda_LD: weight of the MSE between box-head class logits on shared RoIs.
    cfg.MODEL.DISTILL.LOGIT.WEIGHT = 1.0


def _add_literature_distill_config(cfg: CN) -> None:
    # Methods from the literature as distillation terms; each is built only when its name is
    # listed in MODEL.DISTILL.TERMS (and its WEIGHT is not 0).
    cfg.MODEL.DISTILL.CHEN2017 = CN()
    # Multiplier of every Chen2017Distill loss (1.0 = the paper's formulation).
    cfg.MODEL.DISTILL.CHEN2017.WEIGHT = 1.0
    # mu: classification = mu * hard CE + (1 - mu) * soft CE (the detector's loss_cls is the hard CE).
    cfg.MODEL.DISTILL.CHEN2017.MU = 0.5
    # T: softmax temperature of teacher and student class scores in the soft CE.
    cfg.MODEL.DISTILL.CHEN2017.TEMPERATURE = 1.0
    # w_0: weight of the background class in the soft CE (other classes weigh 1).
    cfg.MODEL.DISTILL.CHEN2017.BG_WEIGHT = 1.5
    # nu: weight of the teacher-bounded L2 regression loss added to the detector's smooth L1.
    cfg.MODEL.DISTILL.CHEN2017.NU = 0.5
    # m: the bounded loss is on while ||R_s - y||^2 + m > ||R_t - y||^2.
    cfg.MODEL.DISTILL.CHEN2017.MARGIN = 0.0
    # gamma: weight of the hint loss ||A(V) - Z||^2 (mean over elements and levels); 0 = off.
    cfg.MODEL.DISTILL.CHEN2017.HINT_WEIGHT = 0.5
    # FPN levels that get a hint loss (each through its own 1x1 adaptation conv A).
    cfg.MODEL.DISTILL.CHEN2017.HINT_FEATURES = ["p2", "p3", "p4", "p5"]
    # Distil the box head (soft class scores + bounded regression on foreground RoIs).
    cfg.MODEL.DISTILL.CHEN2017.BOX_HEAD = True
    # Distil the RPN (2-class soft objectness + bounded regression on positive anchors).
    cfg.MODEL.DISTILL.CHEN2017.RPN = True

    cfg.MODEL.DISTILL.FGFI = CN()
    # Weight of the fine-grained feature imitation loss (paper: 0.01).
    cfg.MODEL.DISTILL.FGFI.WEIGHT = 0.01
    # psi: an anchor imitates when its IoU with a gt box > psi * that box's best anchor IoU.
    cfg.MODEL.DISTILL.FGFI.THRESHOLD_RATIO = 0.5
    # FPN levels imitated (a subset of MODEL.RPN.IN_FEATURES, whose anchors define the mask).
    cfg.MODEL.DISTILL.FGFI.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]

    cfg.MODEL.DISTILL.PKD = CN()
    # Weight of each level's Pearson-correlation loss, summed over levels (paper: 6).
    cfg.MODEL.DISTILL.PKD.WEIGHT = 6.0
    # FPN levels distilled.
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Added to each channel's standard deviation before dividing by it.
    cfg.MODEL.DISTILL.PKD.EPS = 1e-6

    cfg.MODEL.DISTILL.GKD = CN()
    # Multiplier of every GKDDistill loss.
    cfg.MODEL.DISTILL.GKD.WEIGHT = 1.0
    # FPN levels with prototypes and feature imitation.
    cfg.MODEL.DISTILL.GKD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # Weight of the robust-weighted feature imitation inside gt boxes.
    cfg.MODEL.DISTILL.GKD.FG_WEIGHT = 0.01
    # Weight of the feature imitation outside every (gt and ignore) box.
    cfg.MODEL.DISTILL.GKD.BG_WEIGHT = 0.0025
    # Weight of the KL divergence between teacher and student RoI class scores.
    cfg.MODEL.DISTILL.GKD.KD_WEIGHT = 1.0
    # Softmax temperature of that KL divergence (scaled by T^2).
    cfg.MODEL.DISTILL.GKD.TEMPERATURE = 2.0
    # K: prototypes selected per class and level.
    cfg.MODEL.DISTILL.GKD.NUM_PROTOTYPES = 10
    # alpha: coupling of teacher and student coefficients in joint matching pursuit.
    cfg.MODEL.DISTILL.GKD.ALPHA = 10.0
    # Ground-truth boxes narrower or lower than this (pixels, original image) give no instance.
    cfg.MODEL.DISTILL.GKD.MIN_BOX_SIZE = 30.0
    # Bandwidth of the Gaussian kernel on cosine distance in the density filter.
    cfg.MODEL.DISTILL.GKD.DENSITY_BANDWIDTH = 0.1
    # Instances below this quantile of density (teacher or student space) are no candidates.
    cfg.MODEL.DISTILL.GKD.DENSITY_QUANTILE = 0.4
    # Training images read per prototype rebuild (sampled with a fixed seed; 0 = all).
    cfg.MODEL.DISTILL.GKD.PROTOTYPE_IMAGES = 500
    # Iterations between prototype rebuilds (0 = once per epoch of the training set).
    cfg.MODEL.DISTILL.GKD.PROTOTYPE_PERIOD = 0
    # Attenuate every GKD loss linearly from 1 at iteration 0 to 0 at SOLVER.MAX_ITER.
    cfg.MODEL.DISTILL.GKD.ATTENUATE = True


def _add_pooler_config(cfg: CN) -> None:
    # Box-head pooler from ROI_POOLER_REGISTRY: "LevelROIPooler" (Detectron2's) or "PyRoIAlign".
    cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME = "LevelROIPooler"
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER = CN()
    # Apply ReLU after PyRoIAlign's 1x1 fusion conv.
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_RELU = True
    # Initialisation of the 1x1 fusion conv: "msra" (He normal) or "mean" (starts as the mean over levels).
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_INIT = "msra"


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


def _add_dataset_config(cfg: CN) -> None:
    cfg.DATASETS.PEDESTRIAN_JSON = CN()
    # Pedestrian JSON data sets to register (train_net.py, Trainer), each "NAME=path/to/file.json".
    cfg.DATASETS.PEDESTRIAN_JSON.FILES = []
    # Folder the image names of those files are relative to ("" = each JSON file's own folder).
    cfg.DATASETS.PEDESTRIAN_JSON.IMAGE_ROOT = ""
    # Evaluation protocol of those data sets: "citypersons" or "caltech" (see datasets/README.md).
    cfg.DATASETS.PEDESTRIAN_JSON.PROTOCOL = "citypersons"
    # Names or ids of their pedestrian categories (empty = "person", "pedestrian").
    cfg.DATASETS.PEDESTRIAN_JSON.CATEGORIES = []


def add_hkd_config(cfg: CN) -> CN:
    """Add every hkd_d2 key (with its default) to ``cfg`` in place and return it."""
    for add in (
        _add_teacher_config,
        _add_distill_config,
        _add_literature_distill_config,
        _add_pooler_config,
        _add_ignore_config,
        _add_eval_config,
        _add_dataset_config,
    ):
        add(cfg)
    return cfg

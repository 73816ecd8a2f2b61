"""Every config key hkd_d2 adds to Detectron2's defaults, with its default value.

Call :func:`add_hkd_config` on a ``get_cfg()`` config before merging a YAML file that
uses these keys. Each group lives in its own small function so one concept keeps one home.
"""
import functools
from typing import Any

from detectron2.config import CfgNode as CN

from .registries import DISTILL_TERM_REGISTRY

__all__ = ["add_hkd_config", "config_value"]


def config_value(cfg: CN, key: str) -> Any:
    """The value of a full dotted key such as ``"MODEL.DISTILL.PYRAMID.WEIGHT"``; a KeyError
    naming it when the key does not exist."""
    try:
        return functools.reduce(getattr, key.split("."), cfg)
    except AttributeError:
        raise KeyError(f"Config key {key} does not exist (is the module declaring it imported?)") from None


def _add_teacher_config(cfg: CN) -> None:
    cfg.MODEL.TEACHER = CN()
    # YAML config of the frozen teacher detector (its own _BASE_ chain, pixel mean/std, heads).
    cfg.MODEL.TEACHER.CONFIG_FILE = ""
    # Checkpoint of the teacher (Detectron2 .pth/.pkl); required when any distillation term is on.
    cfg.MODEL.TEACHER.WEIGHTS = ""


def _add_online_teacher_config(cfg: CN) -> None:
    # Train the teacher with the student on its own detection loss (WEIGHTS = its optional start; docs/methods.md).
    cfg.MODEL.TEACHER.ONLINE = False


def _add_distill_config(cfg: CN) -> None:
    cfg.MODEL.DISTILL = CN()
    # Names of distillation terms (DISTILL_TERM_REGISTRY) to build; a term whose WEIGHT is 0 is not built.
    cfg.MODEL.DISTILL.TERMS = ["PyramidDistill", "RegionDistill", "LogitDistill"]
    # Iterations over which every distillation weight ramps linearly from 0 to its value (0 = none).
    cfg.MODEL.DISTILL.WARMUP_ITERS = 0
    # Bridge differing student/teacher channels with trainable convs (False: channels must match).
    cfg.MODEL.DISTILL.ADAPT_CHANNELS = True
    # Runaway guard: stop training when a distillation loss exceeds this multiple of the
    # summed detection loss (0 = guard off).
    cfg.MODEL.DISTILL.MAX_RATIO = 1000.0
    # ... for this many consecutive iterations.
    cfg.MODEL.DISTILL.MAX_RATIO_ITERS = 20

    cfg.MODEL.DISTILL.AUTO_BALANCE = CN()
    # Before training, set every term's weight so that it starts at TARGET x the detection loss (opt-in).
    cfg.MODEL.DISTILL.AUTO_BALANCE.ENABLED = False
    # Fraction of the detection loss each weighted term is brought to on the measured batches.
    cfg.MODEL.DISTILL.AUTO_BALANCE.TARGET = 0.25
    # Training batches (per process) over which the raw terms and the detection loss are averaged.
    cfg.MODEL.DISTILL.AUTO_BALANCE.BATCHES = 4


def _add_distill_term_config(cfg: CN) -> None:
    # Each term of DISTILL_TERM_REGISTRY declares its own keys (CONFIG_NODE and Defaults in its
    # module under hkd_d2/modeling/distill/, e.g. MODEL.DISTILL.PYRAMID.*, MODEL.DISTILL.GKD.*);
    # each node is added once, in registration order.
    added = set()
    for _, term_class in DISTILL_TERM_REGISTRY:
        if term_class.CONFIG_NODE not in added:
            term_class.add_config(cfg)
            added.add(term_class.CONFIG_NODE)


def _add_pooler_config(cfg: CN) -> None:
    # Box-head pooler from ROI_POOLER_REGISTRY: "LevelROIPooler" (Detectron2's) or "PyRoIAlign".
    cfg.MODEL.ROI_BOX_HEAD.POOLER_NAME = "LevelROIPooler"
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER = CN()
    # Apply ReLU after PyRoIAlign's 1x1 fusion conv.
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_RELU = True
    # Initialisation of the 1x1 fusion conv: "msra" (He normal) or "mean" (starts as the mean over levels).
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_INIT = "msra"
    # Learning-rate factor of the 1x1 fusion conv (its gradients are small relative to its weights).
    cfg.MODEL.ROI_BOX_HEAD.PYRAMID_POOLER.FUSE_LR_FACTOR = 1.0


def _add_ignore_config(cfg: CN) -> None:
    cfg.MODEL.IGNORE_REGIONS = CN()
    # Keep ignore boxes (crowds, "people", every CityPersons label but 1) out of RPN and box-head sampling.
    cfg.MODEL.IGNORE_REGIONS.ENABLED = True
    # An anchor/proposal is ignored when this fraction of its own area lies inside an ignore box.
    cfg.MODEL.IGNORE_REGIONS.IOA_THRESHOLD = 0.5


def _add_eval_config(cfg: CN) -> None:
    cfg.TEST.MISS_RATE = CN()
    # Setups to report (empty = the protocol's standard ones).
    cfg.TEST.MISS_RATE.SETUPS = []
    # Write an MR-FPPI plot (PNG) next to the detections in OUTPUT_DIR.
    cfg.TEST.MISS_RATE.PLOT = True


def _add_data_config(cfg: CN) -> None:
    # Which box of each annotation trains: "full" (bbox, e.g. CrowdHuman fbox) or "visible" (vis_bbox, vbox).
    cfg.DATASETS.TRAIN_BOX = "full"


def _add_export_config(cfg: CN) -> None:
    cfg.EXPORT = CN()
    # Deployment score threshold: SCORE_THRESH_TEST of the exported student.yaml and the default of
    # DeployedPredictor (the config's own SCORE_THRESH_TEST, for miss rates, stays inside the graphs).
    cfg.EXPORT.SCORE_THRESH_TEST = 0.3
    # Deploy-time settings of the runtimes that run an exported student (hkd_d2.deploy.RuntimeOptions);
    # every default keeps the runtime's own behaviour.
    cfg.EXPORT.RUNTIME = CN()
    # ONNX Runtime graph optimisation level: "disable", "basic", "extended" or "all" (its default).
    cfg.EXPORT.RUNTIME.GRAPH_OPTIMIZATION_LEVEL = "all"
    # ONNX Runtime threads per operator (0 = its default, one per physical core).
    cfg.EXPORT.RUNTIME.INTRA_OP_THREADS = 0
    # ONNX Runtime worker threads busy-wait for work between operators (False: they sleep, which
    # frees the cores for other processes at some latency cost).
    cfg.EXPORT.RUNTIME.ALLOW_SPINNING = True
    # TorchScript: freeze the loaded module (torch.jit.freeze: weights and attributes become constants).
    cfg.EXPORT.RUNTIME.TORCHSCRIPT_FREEZE = False


def _add_dataset_config(cfg: CN) -> None:
    cfg.DATASETS.PEDESTRIAN_JSON = CN()
    # Pedestrian JSON data sets to register (train_net.py, Trainer), each "NAME=path/to/file.json".
    cfg.DATASETS.PEDESTRIAN_JSON.FILES = []
    # Folder the image names of those files are relative to ("" = each JSON file's own folder).
    cfg.DATASETS.PEDESTRIAN_JSON.IMAGE_ROOT = ""
    # Evaluation protocol of those data sets: "citypersons" or "caltech" (see docs/datasets.md).
    cfg.DATASETS.PEDESTRIAN_JSON.PROTOCOL = "citypersons"
    # Names or ids of their pedestrian categories (empty = "person", "pedestrian").
    cfg.DATASETS.PEDESTRIAN_JSON.CATEGORIES = []


def _add_curriculum_config(cfg: CN) -> None:
    # Instance-level sequence learning, on with DATALOADER.SAMPLER_TRAIN "CurriculumSampler"
    # (hkd_d2/data/curriculum.py, scored by hkd_d2/engine/curriculum.py).
    cfg.DATALOADER.CURRICULUM = CN()
    # Iterations between two rankings of the training images by the student (0 = one epoch).
    cfg.DATALOADER.CURRICULUM.PHASE_ITERS = 0
    # Fraction of the ranking (the easiest images) fed right after a ranking.
    cfg.DATALOADER.CURRICULUM.START_FRACTION = 0.5
    # Iterations over which that fraction grows linearly to every image (0 = the whole phase).
    cfg.DATALOADER.CURRICULUM.GROWTH_ITERS = 0
    # Difficulty of an image: "detection_loss" (the student's own) or "teacher_distance" (FPN-map MSE).
    cfg.DATALOADER.CURRICULUM.SCORE = "detection_loss"


def _add_compact_config(cfg: CN) -> None:
    # MODEL.COMPACT: the blocks of a compact backbone (written by hkd-compress), one entry per stage res2..res5.
    cfg.MODEL.COMPACT = CN()
    # Output channels of the stem (a Detectron2 BasicStem: 7x7 conv, norm, ReLU, 3x3 max-pool).
    cfg.MODEL.COMPACT.STEM_OUT_CHANNELS = 64
    # Norm of the stem ("" = NORM); a stem copied from a FrozenBN teacher keeps "FrozenBN" here.
    cfg.MODEL.COMPACT.STEM_NORM = ""
    # Norm of every stage block: "GN" (groups: gcd(32, channels)), "BN", "FrozenBN", "SyncBN", "".
    cfg.MODEL.COMPACT.NORM = "GN"
    # Block kind of each stage (COMPACT_BLOCK_REGISTRY): basic, bottleneck, inverted_residual, separable.
    cfg.MODEL.COMPACT.BLOCKS = ["basic", "basic", "basic", "basic"]
    # Number of blocks of each stage (before its 1x1 output projection).
    cfg.MODEL.COMPACT.DEPTHS = [2, 2, 2, 2]
    # Width of each stage's blocks (a bottleneck block's inner width; its output is 4x that).
    cfg.MODEL.COMPACT.WIDTHS = [64, 128, 256, 512]
    # Expansion factor of the inverted-residual stages (hidden = input channels x factor; others ignore it).
    cfg.MODEL.COMPACT.EXPANSIONS = [6.0, 6.0, 6.0, 6.0]
    # Output channels of each stage: a linear 1x1 projection maps the blocks' output to it.
    cfg.MODEL.COMPACT.OUT_CHANNELS = [64, 128, 256, 512]
    # Stages the backbone returns (the FPN reads MODEL.FPN.IN_FEATURES among them).
    cfg.MODEL.COMPACT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def _add_mobilenet_config(cfg: CN) -> None:
    # MODEL.MOBILENET: torchvision's MobileNetV2 as a Detectron2 backbone.
    cfg.MODEL.MOBILENET = CN()
    # Width multiplier of torchvision's mobilenet_v2 (1.0 = the ImageNet model's channels).
    cfg.MODEL.MOBILENET.WIDTH_MULT = 1.0
    # Norm of every layer: "BN" (torchvision's, needed by its ImageNet weights), "FrozenBN", "GN", "SyncBN".
    cfg.MODEL.MOBILENET.NORM = "BN"
    # Stages the backbone returns: res2..res5 end at strides 4, 8, 16 and 32.
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def _add_pcl_config(cfg: CN) -> None:
    # Peer collaborative learning: META_ARCHITECTURE "PCLDistiller" + ROI_HEADS.NAME "PCLROIHeads" (hkd_d2/modeling/pcl/).
    cfg.MODEL.PCL = CN()
    # Number of peer box heads (box head + predictor) on the shared backbone, FPN, RPN and pooler (at least 2).
    cfg.MODEL.PCL.NUM_PEERS = 3
    # Temperature T of both peer-teacher KD losses (each multiplied by T^2).
    cfg.MODEL.PCL.TEMPERATURE = 3.0
    # Largest decay of the peer mean teacher (EMA); update s uses min(1 - 1/(s + 1), EMA_DECAY).
    cfg.MODEL.PCL.EMA_DECAY = 0.999
    # Ramp the KD losses in by exp(-5 (1 - p)^2), p the progress through RAMPUP_ITERS (False: factor 1).
    cfg.MODEL.PCL.RAMPUP = True
    # Iterations of that ramp-up (0 = SOLVER.MAX_ITER, the whole training).
    cfg.MODEL.PCL.RAMPUP_ITERS = 0
    # Weight of the peer ensemble teacher's KD loss (loss_pcl_ensemble).
    cfg.MODEL.PCL.ENSEMBLE_WEIGHT = 1.0
    # Weight of the peer mean teacher's KD loss (loss_pcl_mean).
    cfg.MODEL.PCL.MEAN_WEIGHT = 1.0
    # Each peer's detection loss on a RoI sample of its own (False: all on the shared distillation sample).
    cfg.MODEL.PCL.PEER_SAMPLING = True
    # Dropout probability on each peer's box-head features in training (0 = none).
    cfg.MODEL.PCL.PEER_DROPOUT = 0.0
    # The peer whose mean teacher is evaluated and exported (0 .. NUM_PEERS - 1).
    cfg.MODEL.PCL.DEPLOY_PEER = 0


def add_hkd_config(cfg: CN) -> CN:
    """Add every hkd_d2 key (with its default) to ``cfg`` in place and return it."""
    for add in (
        _add_teacher_config,
        _add_online_teacher_config,
        _add_distill_config,
        _add_distill_term_config,
        _add_pooler_config,
        _add_ignore_config,
        _add_eval_config,
        _add_data_config,
        _add_export_config,
        _add_dataset_config,
        _add_curriculum_config,
        _add_compact_config,
        _add_mobilenet_config,
        _add_pcl_config,
    ):
        add(cfg)
    return cfg

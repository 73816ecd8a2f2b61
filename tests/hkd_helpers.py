"""Tiny HKD set-ups shared by the distillation tests: configs, a teacher checkpoint, a batch.

Everything is sized for CPU tests: 64x96 images, FPN with 32 channels, a few RoIs.
"""
import contextlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hkd_d2.config import add_hkd_config
from hkd_d2.data import register_pedestrian_dataset
from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.modeling.distill import DISTILL_TERM_REGISTRY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HKD_CONFIG = CONFIGS / "synthetic" / "hkd_R50_to_R18.yaml"
TEACHER_BASE = CONFIGS / "synthetic" / "teacher_R50_FPN.yaml"
IMAGE_HW = (64, 96)
FPN_CHANNELS = 32

# Keys that make a detector tiny; applied to the student and written into the teacher's YAML.
TINY = {
    "MODEL.DEVICE": "cpu",
    "MODEL.FPN.OUT_CHANNELS": FPN_CHANNELS,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 40,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 100,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 20,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 32,
    # A random teacher's maps are large (BatchNorm eval with untrained statistics): clip.
    "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
}


def _merge(cfg: CfgNode, overrides: Dict) -> CfgNode:
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def teacher_cfg(depth: int = 18, norm: str = "BN", **overrides) -> CfgNode:
    """A tiny teacher config (synthetic teacher config + TINY + overrides)."""
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(TEACHER_BASE))
    return _merge(cfg, {**TINY, "MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.NORM": norm,
                        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if depth in (18, 34) else 256,
                        **overrides})


def write_teacher(tmp_path: Path, depth: int = 18, norm: str = "BN", seed: int = 1,
                  **overrides) -> Dict[str, str]:
    """Write a teacher YAML and a randomly initialised checkpoint of it under ``tmp_path``."""
    cfg = teacher_cfg(depth, norm, **overrides)
    config_file = tmp_path / f"teacher_R{depth}.yaml"
    config_file.write_text(cfg.dump())
    torch.manual_seed(seed)
    weights = tmp_path / f"teacher_R{depth}.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    return {"MODEL.TEACHER.CONFIG_FILE": str(config_file), "MODEL.TEACHER.WEIGHTS": str(weights)}


def hkd_cfg(teacher: Dict[str, str], norm: str = "BN", **overrides) -> CfgNode:
    """The synthetic HKD config made tiny, with the given teacher files."""
    cfg = add_hkd_config(get_cfg())
    cfg.merge_from_file(str(HKD_CONFIG))
    return _merge(cfg, {**TINY, "MODEL.RESNETS.NORM": norm, **teacher, **overrides})


def register_tiny_citypersons(root: Path, name: str, classes: Optional[Sequence[str]] = None, **synthetic) -> str:
    """Generate 4 tiny synthetic CityPersons images (96x64) under ``root`` and register their
    train split as ``name`` (again when it exists), with ``classes`` (CityPersons labels) when given."""
    data = root / "data"
    generate_synthetic(data, 4, 1, SyntheticConfig(width=96, height=64, seed=3, scale=2.0, **synthetic),
                       formats=("citypersons",), workers=0)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    cp = data / "citypersons"
    register_pedestrian_dataset(name, cp / "annotations" / "anno_train.mat", image_root=cp / "leftImg8bit" / "train",
                                **({"classes": tuple(classes)} if classes else {}))
    return name


def trainer_cfg(config_file: Path, teacher: Dict[str, str], dataset: str, out: Path, **overrides) -> CfgNode:
    """``config_file`` made tiny for a Trainer on ``dataset`` (no test set, no loader workers)."""
    from hkd_d2.engine import load_config

    cfg = load_config(str(config_file))
    return _merge(cfg, {**TINY, **teacher, "DATASETS.TRAIN": (dataset,), "DATASETS.TEST": (),
                        "INPUT.MIN_SIZE_TRAIN": (64,), "INPUT.MAX_SIZE_TRAIN": 96, "INPUT.MIN_SIZE_TEST": 64,
                        "INPUT.MAX_SIZE_TEST": 96, "DATALOADER.NUM_WORKERS": 0, "SOLVER.MAX_ITER": 2,
                        "SOLVER.CHECKPOINT_PERIOD": 1000, "SOLVER.IMS_PER_BATCH": 2, "MODEL.RESNETS.NORM": "BN",
                        "OUTPUT_DIR": str(out), **overrides})


def build_hkd(cfg: CfgNode, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def train_iterations(cfg: CfgNode, steps: int = 2, check: Callable[[Dict], None] = lambda losses: None,
                     after_step: Callable[[torch.nn.Module, int], None] = lambda model, step: None):
    """Build ``cfg``'s model (seed 0) and train it ``steps`` iterations on :func:`batch` (seed =
    step), calling ``check(losses)`` on every step's loss dict and ``after_step(model, step)`` after
    every optimizer step; return the model."""
    model = build_hkd(cfg)
    optimizer = build_optimizer(cfg, model)
    model.train()
    with EventStorage():
        for step in range(steps):
            losses = model(batch(seed=step))
            check(losses)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            after_step(model, step)
    return model


@contextlib.contextmanager
def synthetic_dataset(folder: Path, names: List[str], images: int, width: int, height: int) -> Iterator[Path]:
    """Generate ``images`` CityPersons-format scenes under ``folder`` and register them as each of
    ``names`` (removed again after the block); yields the CityPersons folder."""
    generate_synthetic(folder, images, 1, SyntheticConfig(width=width, height=height, scale=5.0),
                       formats=("citypersons",), workers=0)
    root = folder / "citypersons"
    for name in names:
        register_pedestrian_dataset(name, root / "ground_truth_train.json", protocol="citypersons",
                                    image_root=root / "leftImg8bit" / "train")
    try:
        yield root
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def batch(seed: int = 0, with_ignore: bool = True) -> List[Dict]:
    """Two images (uint8, 3x64x96) with one pedestrian each (and an ignore box in the first)."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(2):
        boxes = [[10.0 + 20 * i, 8.0, 30.0 + 20 * i, 56.0]]
        ignore = [False]
        if with_ignore and i == 0:
            boxes.append([60.0, 4.0, 90.0, 60.0])
            ignore.append(True)
        inst = Instances(IMAGE_HW)
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        inst.gt_ignore = torch.tensor(ignore)
        image = torch.randint(0, 256, (3, *IMAGE_HW), generator=g, dtype=torch.uint8)
        inputs.append({"image": image, "instances": inst, "height": IMAGE_HW[0], "width": IMAGE_HW[1]})
    return inputs


class CallCounter:
    """Counts forward calls of a module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.calls += 1


def student_keys(cfg: CfgNode, meta: Optional[str] = "GeneralizedRCNN") -> set:
    """state_dict keys of the plain student detector of ``cfg``."""
    plain = cfg.clone()
    plain.MODEL.META_ARCHITECTURE = meta
    return set(build_model(plain).state_dict())


def withhold_term(name: str) -> type:
    """Take a test-only term out of ``DISTILL_TERM_REGISTRY`` (registering it gave every config its
    keys): configs other tests dump (and load in subprocesses without that term) stay plain.
    fvcore's Registry has no public removal, hence its ``_obj_map``."""
    return DISTILL_TERM_REGISTRY._obj_map.pop(name)


@contextlib.contextmanager
def registered_term(term_class: type) -> Iterator[None]:
    """Register a withheld term (its keys in every config built) for the duration of the block."""
    DISTILL_TERM_REGISTRY.register(term_class)
    try:
        yield
    finally:
        DISTILL_TERM_REGISTRY._obj_map.pop(term_class.__name__, None)

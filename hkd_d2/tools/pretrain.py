"""Pre-train a detector's bottom-up ResNet on generated texture images (``hkd-pretrain``).

    python -m hkd_d2.tools.pretrain --depth 18      # -> output/pretrain/R-18.pkl
    python -m hkd_d2.tools.pretrain --depth 50      # -> output/pretrain/R-50.pkl
    python -m hkd_d2.tools.pretrain --config-file configs/caltech/teacher_R50_FPN.yaml --out r50_caltech.pkl

A stand-in for ImageNet initialisation where no ImageNet weights can be had. The ResNet that
Detectron2's ``build_resnet_backbone`` builds from a detector config (depth, norm, stride in 1x1,
stem, pixel mean/std, input format; by default the ``configs/synthetic/pretrained`` student or
teacher) gets a global-average-pool + linear head and learns to classify the textures of
:mod:`hkd_d2.data.textures` (nothing like the pedestrian data), with AdamW, a linear warm-up and
a cosine decay. Every stage is trained (``FREEZE_AT`` 0); a frozen BatchNorm (``FrozenBN``: the
real recipes' and the pretrained configs' norm, as Detectron2 fine-tunes ImageNet ResNets) is
trained as BatchNorm, whose statistics the detector's FrozenBN then loads. GroupNorm (the
from-scratch synthetic configs: ``--config-file configs/synthetic/student_R18_FPN.yaml``) trains
too, but learns more slowly in the same steps. Each residual branch starts at zero
(:class:`~hkd_d2.modeling.classifier.BackboneClassifier`), without which an R50 does not learn
in a few hundred steps.

The head is dropped and the ResNet written as Detectron2 reads an ImageNet ``.pkl``
(:func:`hkd_d2.checkpoint.save_backbone_pkl`): ``MODEL.WEIGHTS path/R-18.pkl`` loads it into
``backbone.bottom_up``; the FPN and the heads stay freshly initialised, as with ImageNet weights.
The accuracy on held-out images and the settings go into the file (``pretraining``) and
``<out>.json``.
"""
import argparse
import logging
import math
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger

from ..checkpoint import save_backbone_pkl
from ..data.textures import MAX_CLASSES, TextureConfig, class_name, generate_textures
from ..engine.setup import load_config
from ..model_zoo import get_config_file
from ..modeling.classifier import BackboneClassifier
from .environment import numeric_environment
from .progress import format_duration
from .report import write_json

__all__ = ["RESNET_DEPTHS", "DEFAULT_CONFIGS", "parse_args", "pretraining_config", "check_output", "run_pretraining",
           "main"]

logger = logging.getLogger("hkd_d2.pretrain")

# Depths Detectron2's build_resnet_backbone builds.
RESNET_DEPTHS = (18, 34, 50, 101, 152)
# Detector config whose ResNet is pre-trained, by depth family (basic blocks: 18, 34; bottlenecks: 50+):
# the synthetic student and teacher of the pre-trained setting; --depth sets MODEL.RESNETS.DEPTH on it.
DEFAULT_CONFIGS = {"basic": "synthetic/pretrained/student_R18_FPN_pretrained.yaml",
                   "bottleneck": "synthetic/pretrained/teacher_R50_FPN_pretrained.yaml"}
# Default iterations by depth family: a few CPU minutes each (a bottleneck step costs about twice a basic one).
DEFAULT_ITERS = {"basic": 500, "bottleneck": 250}
# Default checkpoint, relative to the working directory (the pretrained configs' MODEL.WEIGHTS).
DEFAULT_OUT = "output/pretrain/R-{depth}.pkl"
AUTHOR = "hkd_d2.tools.pretrain"
# Norms that do not train (or need several processes), trained as plain BatchNorm instead.
TRAINABLE_NORM = {"FrozenBN": "BN", "SyncBN": "BN", "naiveSyncBN": "BN", "nnSyncBN": "BN"}
WEIGHT_DECAY = 0.01  # AdamW's (decoupled) weight decay


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=None,
                   help=f"ResNet depth {RESNET_DEPTHS}; without --config-file the ResNet of "
                        f"{DEFAULT_CONFIGS['basic']} (18, 34) or {DEFAULT_CONFIGS['bottleneck']} (50+) at that depth")
    p.add_argument("--config-file", default=None, help="detector config whose bottom-up ResNet is pre-trained")
    p.add_argument("--out", default=None, help=f"checkpoint to write, .pkl (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--classes", type=int, default=MAX_CLASSES, help="texture classes, 2..%(default)s")
    p.add_argument("--image-size", type=int, default=48, help="square image size in px (default %(default)s)")
    p.add_argument("--num-train", type=int, default=8000, help="generated training images (default %(default)s)")
    p.add_argument("--num-val", type=int, default=1000, help="generated held-out images (default %(default)s)")
    p.add_argument("--iters", type=int, default=None,
                   help=f"training iterations (default {DEFAULT_ITERS['basic']} for R18/R34, "
                        f"{DEFAULT_ITERS['bottleneck']} for R50 and deeper)")
    p.add_argument("--batch", type=int, default=32, help="images per iteration (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.002,
                   help="peak AdamW learning rate: linear warm-up, cosine decay (default %(default)s)")
    p.add_argument("--warmup-iters", type=int, default=50,
                   help="iterations of warm-up, at most a fifth of --iters (default %(default)s)")
    p.add_argument("--clip-grad-norm", type=float, default=5.0,
                   help="gradient norm clip: from scratch, an early spike must not derail the run (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data, the initialisation and the batch order (default %(default)s)")
    p.add_argument("--log-period", type=int, default=20, help="iterations between progress lines (default %(default)s)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the detector config")
    args = p.parse_args(argv)
    _check_numbers(args)
    return args


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("image_size", "num_train", "num_val", "iters", "batch", "log_period"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("lr", "clip_grad_norm"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if args.warmup_iters < 0:
        raise ValueError(f"--warmup-iters must be >= 0, got {args.warmup_iters}")
    if args.depth is not None and args.depth not in RESNET_DEPTHS:
        raise ValueError(f"--depth {args.depth}: Detectron2's ResNets have depth {', '.join(map(str, RESNET_DEPTHS))}")
    if args.depth is None and args.config_file is None:
        raise ValueError("Give --depth (e.g. 18 or 50: the pre-trained setting's synthetic student / teacher) "
                         "or --config-file")


def _family(depth: int) -> str:
    return "basic" if depth < 50 else "bottleneck"


def pretraining_config(config_file: Optional[str], depth: Optional[int], opts: Sequence[str] = ()) -> CfgNode:
    """The detector config (``config_file``, else the default of ``depth``) set up for
    pre-training: every stage trainable, a frozen / synchronised BatchNorm trained as BatchNorm."""
    if config_file is None:
        config_file = get_config_file(DEFAULT_CONFIGS[_family(depth)])
        opts = ["MODEL.RESNETS.DEPTH", str(depth)] + list(opts)
    cfg = load_config(config_file, list(opts))
    if depth is not None and cfg.MODEL.RESNETS.DEPTH != depth:
        raise ValueError(f"--depth {depth} but {config_file} has MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH}")
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} of {config_file}: pre-training draws BGR or RGB images")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = TRAINABLE_NORM.get(cfg.MODEL.RESNETS.NORM, cfg.MODEL.RESNETS.NORM)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def check_output(path: Path, overwrite: bool) -> None:
    """Before any training: ``path`` ends in ``.pkl`` (Detectron2 reads pickles by that name), does not
    exist unless ``overwrite``, and its folder exists or can be made."""
    if path.suffix != ".pkl":
        raise ValueError(f"--out {path}: must end in .pkl (MODEL.WEIGHTS reads a Detectron2 backbone pickle by that name)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--out {path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give the checkpoint's file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"--out {path}: cannot make its folder {path.parent} ({e.strerror or e})") from e


def _batch(images: np.ndarray, rgb: bool) -> torch.Tensor:
    """uint8 (N, H, W, 3) BGR -> float (N, 3, H, W) in the config's channel order."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x.flip(1) if rgb else x


def _learning_rate(args: argparse.Namespace, it: int) -> float:
    """Linear warm-up over ``--warmup-iters`` (at most a fifth of the run), then cosine decay to 0."""
    warmup = min(args.warmup_iters, args.iters // 5)
    if it < warmup:
        return args.lr * (it + 1) / warmup
    progress = (it - warmup) / max(1, args.iters - warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: BackboneClassifier, images: np.ndarray, labels: np.ndarray, rgb: bool, batch: int) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 (N, H, W, 3) BGR ``images``."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(_batch(images[start:start + batch], rgb))
        correct += int((logits.argmax(1).numpy() == labels[start:start + batch]).sum())
    model.train(was_training)
    return correct / len(images)


def train_classifier(model: BackboneClassifier, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
                     rgb: bool) -> Dict[str, float]:
    """AdamW (warm-up + cosine, clipped gradient norm) on shuffled batches (not flipped: a mirror turns
    45-degree textures into 135-degree ones); progress every ``args.log_period`` iterations.
    Returns the loss and accuracy of the last period."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(images), generator=generator)
    cursor, start = 0, time.monotonic()
    period = {"loss": 0.0, "correct": 0, "seen": 0}
    model.train()
    for it in range(args.iters):
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        index = order[cursor:cursor + args.batch].numpy()
        cursor += args.batch
        x = _batch(images[index], rgb)
        target = torch.from_numpy(labels[index])
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(args, it)
        logits = model(x)
        loss = F.cross_entropy(logits, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Pre-training loss is {loss.item()} at iteration {it + 1}; lower --lr (now {args.lr})")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        optimizer.step()
        period["loss"] += loss.item() * len(index)
        period["correct"] += int((logits.argmax(1) == target).sum())
        period["seen"] += len(index)
        if (it + 1) % args.log_period == 0 or it + 1 == args.iters:
            elapsed = time.monotonic() - start
            last = {"loss": period["loss"] / period["seen"], "accuracy": period["correct"] / period["seen"]}
            logger.info(f"iter {it + 1}/{args.iters}  loss {last['loss']:.3f}  train acc {100 * last['accuracy']:.1f}%  "
                        f"lr {_learning_rate(args, it):.4f}  {elapsed / (it + 1):.2f} s/iter  "
                        f"ETA {format_duration(elapsed / (it + 1) * (args.iters - it - 1))}")
            period = {"loss": 0.0, "correct": 0, "seen": 0}
    return last


def _data(args: argparse.Namespace) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """(train images, labels), (held-out images, labels)."""
    textures = TextureConfig(num_classes=args.classes, size=args.image_size, seed=args.seed)
    return generate_textures(textures, "train", args.num_train), generate_textures(textures, "val", args.num_val)


def run_pretraining(args: argparse.Namespace) -> Dict:
    """Generate the data, train, evaluate, write ``--out`` and ``<out>.json``; return the summary."""
    cfg = pretraining_config(args.config_file, args.depth, args.opts)
    depth = cfg.MODEL.RESNETS.DEPTH
    args = argparse.Namespace(**{**vars(args), "iters": args.iters or DEFAULT_ITERS[_family(depth)]})
    out = Path(args.out or DEFAULT_OUT.format(depth=depth))
    check_output(out, args.overwrite)
    start, start_cpu = time.monotonic(), time.process_time()
    torch.manual_seed(args.seed)
    (images, labels), (val_images, val_labels) = _data(args)
    logger.info(f"R{depth} ({cfg.MODEL.RESNETS.NORM}) on {args.num_train} + {args.num_val} generated "
                f"{args.image_size}x{args.image_size} images of {args.classes} classes "
                f"({class_name(0)}, {class_name(1)}, ...); {args.iters} iterations of {args.batch}")
    model = BackboneClassifier(cfg, num_classes=args.classes)
    rgb = cfg.INPUT.FORMAT == "RGB"
    last = train_classifier(model, images, labels, args, rgb)
    summary = {
        "depth": depth, "config_file": args.config_file or DEFAULT_CONFIGS[_family(depth)],
        "norm": cfg.MODEL.RESNETS.NORM, "stride_in_1x1": cfg.MODEL.RESNETS.STRIDE_IN_1X1,
        "task": "generated textures (hkd_d2.data.textures)", "classes": args.classes, "image_size": args.image_size,
        "num_train": args.num_train, "num_val": args.num_val, "iters": args.iters, "batch": args.batch, "lr": args.lr,
        "seed": args.seed, "final_train_loss": last["loss"], "final_train_batch_accuracy": last["accuracy"],
        "train_accuracy": accuracy(model, images[:args.num_val], labels[:args.num_val], rgb, args.batch),
        "val_accuracy": accuracy(model, val_images, val_labels, rgb, args.batch),
        "seconds": time.monotonic() - start, "cpu_seconds": time.process_time() - start_cpu,
        "environment": numeric_environment("cpu"),
    }
    save_backbone_pkl(str(out), model.backbone, AUTHOR, pretraining=summary)
    write_json(out.with_suffix(".json"), summary)
    logger.info(f"Wrote {out} in {format_duration(summary['seconds'])} ({format_duration(summary['cpu_seconds'])} of "
                f"CPU time): accuracy on {args.num_val} training images "
                f"{100 * summary['train_accuracy']:.1f}%, on {args.num_val} held-out images "
                f"{100 * summary['val_accuracy']:.1f}% (chance {100 / args.classes:.1f}%)")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    setup_logger(name="hkd_d2", abbrev_name="hkd")
    return run_pretraining(args)


if __name__ == "__main__":
    main()

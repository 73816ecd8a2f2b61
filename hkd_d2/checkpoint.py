"""Loading and saving weights: Detectron2 checkpoints and torchvision ImageNet ResNets, with clear errors.

:class:`DistillCheckpointer` is Detectron2's ``DetectionCheckpointer`` plus these things:

* a missing weights file raises ``FileNotFoundError`` naming it (not a bare assert);
* a truncated, empty or foreign file raises :class:`CheckpointFileError` naming it and saying
  what is wrong (not PyTorch's "failed finding central directory");
* checkpoints are written atomically (:func:`~hkd_d2.atomic.atomic_output`: temporary file,
  fsync, rename) and ``last_checkpoint`` is updated only after the rename, so a kill or a full
  disk never leaves a truncated file under a checkpoint's name; a full disk raises
  :class:`~hkd_d2.atomic.DiskFullError` naming the file, the folder and the intact previous checkpoint;
* ``resume_or_load(resume=True)`` falls back, with a warning, from an unreadable newest
  checkpoint to the newest intact one (:class:`ResumeError` when there is none);
* each checkpoint can carry the YAML of its run's config (``run_config``) for resume checks;
* a torchvision ResNet ``state_dict`` (``conv1.weight``, ``layer1.0.bn1.weight``, ...) is converted
  on load to Detectron2's backbone names (``backbone.bottom_up.stem.conv1.weight``, ...); so is
  every layout of :data:`FOREIGN_WEIGHTS` (torchvision MobileNetV2: :mod:`hkd_d2.modeling.backbone.mobilenet`);
* weights of another architecture raise :class:`WeightsMismatchError` listing the missing,
  unexpected and wrongly shaped keys, instead of a warning that is easy to miss;
* a model's ``checkpoint_optional_prefixes`` (a distiller's channel adapters, an online teacher)
  need not be in a file of initial weights, and a name-matched file (ImageNet) is matched against
  the other keys only (an online teacher's backbone has the student's names); its
  ``checkpoint_resume_prefixes`` must be in a checkpoint resumed from.

A backbone-only checkpoint (a converted ImageNet ResNet, Detectron2's / pycls' ImageNet ``.pkl``,
or one :func:`save_backbone_pkl` writes) may leave the FPN and heads uninitialised: only its own
keys must all match.
"""
import glob
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from .atomic import DiskFullError, atomic_output

__all__ = [
    "CONFIG_KEY",
    "FOREIGN_WEIGHTS",
    "CheckpointFileError",
    "DistillCheckpointer",
    "HKDCheckpointer",
    "ResumeError",
    "WeightsMismatchError",
    "check_checkpoint_file",
    "convert_torchvision_resnet",
    "is_torchvision_resnet",
    "load_detector_weights",
    "save_backbone_pkl",
]

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone.bottom_up."
# Box-predictor layers whose shape depends on the number of classes (fine-tuning from COCO).
CLASS_DEPENDENT_PREFIX = "roi_heads.box_predictor."
# Checkpoint entry holding the YAML config of the run that wrote it.
CONFIG_KEY = "config"
# Names of the training checkpoints (fvcore's PeriodicCheckpointer: model_0000999.pth, model_final.pth).
TRAINING_CHECKPOINTS = "model_*.pth"
# First bytes of what torch.save writes (a zip archive) and of a pickle (protocol 2 or later).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
# What torch.load / pickle.load raise on a damaged or foreign file.
_PARSE_ERRORS = (
    RuntimeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
    AttributeError, IndexError, ImportError, zipfile.BadZipFile,
)

# torchvision ResNet name fragments -> Detectron2 ResNet name fragments, applied in order.
_TORCHVISION_TO_D2 = (
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.bn(\d)\.", lambda m: f".conv{m.group(1)}.norm."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
)


# State-dict entries that are not weights (BatchNorm's step counters): never required, never written.
_NOT_WEIGHTS = "num_batches_tracked"


class WeightsMismatchError(RuntimeError):
    """Weights that do not fit the model: names the file and the offending keys."""

    def __init__(self, path: str, missing: List[str], unexpected: List[str], shapes: List[Tuple]):
        lines = [f"Weights in {path} do not fit the model (another architecture or config?)."]
        for title, keys in (("missing in the file", missing), ("unexpected in the file", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} keys {title}: {_abbreviate(keys)}")
        if shapes:
            shown = ", ".join(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in shapes[:5])
            lines.append(f"  {len(shapes)} keys with another shape: {shown}")
        super().__init__("\n".join(lines))
        self.path, self.missing, self.unexpected, self.shapes = path, missing, unexpected, shapes


class CheckpointFileError(ValueError):
    """A weights file that cannot be read as a checkpoint: names the file and what is wrong with it."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"Cannot load weights file {path}: {problem}")
        self.path, self.problem = path, problem


class ResumeError(RuntimeError):
    """``--resume`` found checkpoints in OUTPUT_DIR but none of them is intact."""


def _unreadable(path: str, error: BaseException) -> CheckpointFileError:
    """The :class:`CheckpointFileError` for a file that ``torch.load`` / ``pickle`` failed on."""
    size = os.path.getsize(path)
    if size == 0:
        return CheckpointFileError(path, "the file is empty (0 bytes; a save or copy cut short?)")
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    cause = f"[{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}]"
    if head == ZIP_MAGIC:
        try:
            zipfile.ZipFile(path).close()
        except zipfile.BadZipFile:
            return CheckpointFileError(
                path, f"truncated or damaged PyTorch archive ({size} bytes; a save or copy cut short?) {cause}"
            )
        return CheckpointFileError(path, f"a PyTorch file that does not hold a checkpoint {cause}")
    if head[:1] == PICKLE_MAGIC:
        return CheckpointFileError(path, f"truncated, damaged or foreign pickle ({size} bytes) {cause}")
    return CheckpointFileError(
        path, f"not a PyTorch checkpoint or pickle (starts with {head!r}, {size} bytes) {cause}"
    )


def _check_structure(data: Any, path: str) -> None:
    """Raise :class:`CheckpointFileError` unless ``data`` is ``{"model": {name: tensor/array}, ...}``."""
    model = data.get("model") if isinstance(data, dict) else data
    if not isinstance(model, dict):
        raise CheckpointFileError(
            path, f"not a checkpoint: it holds a {type(model).__name__}, expected a state dict "
            "(name -> tensor) or {'model': state dict, ...}"
        )
    bad = [str(k) for k, v in model.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
    if bad:
        raise CheckpointFileError(path, f"not a checkpoint: entries that are not tensors: {_abbreviate(bad)}")


def check_checkpoint_file(path: str) -> Dict[str, Any]:
    """Read a ``.pth`` checkpoint and return it; ``FileNotFoundError`` or :class:`CheckpointFileError`
    (naming ``path`` and the problem) when it is absent, truncated, empty or not a checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu")
    except _PARSE_ERRORS as e:
        raise _unreadable(path, e) from e
    _check_structure(data, path)
    return data


def _abbreviate(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def is_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True for a torchvision ``resnetXX().state_dict()`` (or one saved from it)."""
    return "conv1.weight" in state_dict and any(k.startswith("layer1.0.") for k in state_dict)


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to Detectron2 backbone keys.

    The classifier (``fc.*``) and BatchNorm's ``num_batches_tracked`` counters are dropped.
    torchvision's bottlenecks stride in the 3x3 conv: train such a backbone with
    ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and torchvision's RGB pixel mean/std (see docs/getting_started.md).
    """
    converted = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith(_NOT_WEIGHTS):
            continue
        new = name
        for pattern, repl in _TORCHVISION_TO_D2:
            new = re.sub(pattern, repl, new)
        converted[BACKBONE_PREFIX + new] = value
    return converted


# Weights of other libraries converted on load, tried in order: (what they are, recogniser of the
# state dict, converter to Detectron2 names). A converted file holds a backbone only.
FOREIGN_WEIGHTS: List[Tuple[str, Callable[[Dict[str, Any]], bool], Callable[[Dict[str, Any]], Dict[str, Any]]]] = [
    ("torchvision ResNet", is_torchvision_resnet, convert_torchvision_resnet),
]


class DistillCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with torchvision conversion and strict, explained key checks (the
    checkpointer of every hkd_d2 training, teachers' and students' alike).

    Args:
        allow_new_classes: accept another class count in the box predictor (fine-tuning a
            detector trained on other classes); those layers keep their fresh initialisation.
        allow_backbone_only: accept a backbone-only file (ImageNet weights), leaving the FPN
            and heads as initialised; off for a teacher, which must be loaded whole.
        run_config: YAML of the training config, stored in every checkpoint under
            :data:`CONFIG_KEY` (empty = not stored).
        Other arguments as ``DetectionCheckpointer``.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_new_classes: bool = True,
        allow_backbone_only: bool = True,
        run_config: str = "",
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_new_classes = allow_new_classes
        self.allow_backbone_only = allow_backbone_only
        self.run_config = run_config
        self.resumed_from = ""
        self._path_being_loaded = ""
        self._resuming = False

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file not found: {path}")
        self._path_being_loaded = path
        return super().load(path, *args, **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it.

        Raises :class:`~hkd_d2.atomic.DiskFullError` naming the file, its folder and the
        previous checkpoint (intact) when the disk is full.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # remote storage: PathManager's own write semantics
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        if self.run_config:
            data[CONFIG_KEY] = self.run_config
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
        try:
            with atomic_output(save_file) as tmp:
                with open(tmp, "wb") as f:
                    torch.save(data, f)
            self.tag_last_checkpoint(basename)
        except DiskFullError as e:
            intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
            raise DiskFullError(e.path, f"{intact}; free space, then train with --resume") from e

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically (a kill never leaves it empty)."""
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        with atomic_output(os.path.join(self.save_dir, "last_checkpoint")) as tmp:
            tmp.write_text(last_filename_basename)

    def resume_candidates(self) -> List[str]:
        """Checkpoints to resume from, best first: the one ``last_checkpoint`` names, then the
        other ``model_*.pth`` of ``save_dir`` by modification time, newest first."""
        tagged = self.get_checkpoint_file()
        others = [p for p in glob.glob(os.path.join(self.save_dir, TRAINING_CHECKPOINTS)) if p != tagged]
        others.sort(key=os.path.getmtime, reverse=True)
        return [tagged, *others] if tagged else others

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """As fvcore's, but a resume skips unreadable checkpoints (with a warning naming each)
        and loads the newest intact one; :class:`ResumeError` when none is intact.
        ``resumed_from`` is then the file loaded."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        skipped = []
        for candidate in self.resume_candidates():
            try:
                check_checkpoint_file(candidate)  # read once before touching model or optimizer
            except (CheckpointFileError, FileNotFoundError) as e:
                logger.warning(f"Not resuming from {candidate}: {e}")
                skipped.append(str(e))
                continue
            self._resuming = True
            try:
                extra = self.load(candidate)
            finally:
                self._resuming = False
            if skipped:
                logger.warning(f"Resumed from {candidate}, the newest intact checkpoint")
            self.resumed_from = candidate
            return extra
        raise ResumeError(
            f"--resume: no intact checkpoint in {self.save_dir}: " + "; ".join(skipped)
            + ". Remove these files (or choose another OUTPUT_DIR) to train from the start."
        )

    def _load_file(self, filename: str):
        try:
            data = super()._load_file(filename)
        except _PARSE_ERRORS as e:
            raise _unreadable(filename, e) from e
        _check_structure(data, filename)
        for name, recognise, convert in FOREIGN_WEIGHTS:
            if isinstance(data.get("model"), dict) and recognise(data["model"]):
                logger.info(f"{filename}: {name} weights, converted to Detectron2 names")
                data["model"] = convert(data["model"])
                data["backbone_only"] = True
                break
        if data.get("matching_heuristics", False):
            data["backbone_only"] = True
        return data

    def _optional_prefixes(self) -> Tuple[str, ...]:
        """Prefixes of model keys the file being loaded need not hold (none of a model's
        ``checkpoint_resume_prefixes`` while resuming)."""
        optional = tuple(getattr(self.model, "checkpoint_optional_prefixes", ()))
        required = tuple(getattr(self.model, "checkpoint_resume_prefixes", ())) if self._resuming else ()
        return tuple(p for p in optional if p not in required)

    def _match_own_keys(self, checkpoint: Dict[str, Any]) -> None:
        """Name-match a file of weights by heuristics (Detectron2's, as for an ImageNet ``.pkl``)
        against the model's keys outside its optional prefixes: a module such as an online teacher
        has keys ending as the student's do, which would make every match ambiguous."""
        optional = self._optional_prefixes()
        self._convert_ndarray_to_tensor(checkpoint["model"])
        own = {k: v for k, v in self.model.state_dict().items() if not k.startswith(optional)}
        checkpoint["model"] = align_and_update_state_dicts(
            own, checkpoint["model"], c2_conversion=checkpoint.get("__author__", None) == "Caffe2"
        )
        checkpoint["matching_heuristics"] = False

    def _load_model(self, checkpoint):
        file_keys = list(checkpoint["model"].keys())
        if checkpoint.get("matching_heuristics", False) and self._optional_prefixes():
            self._match_own_keys(checkpoint)
        incompatible = super()._load_model(checkpoint)
        backbone_only = self.allow_backbone_only and (
            checkpoint.get("backbone_only", False)
            or all(k.startswith(BACKBONE_PREFIX) for k in file_keys)
        )
        self._raise_if_mismatched(incompatible, backbone_only)
        return incompatible

    def _raise_if_mismatched(self, incompatible, backbone_only: bool) -> None:
        # BatchNorm's step counters are not weights: files without them still fit.
        missing = [k for k in incompatible.missing_keys if not k.endswith(_NOT_WEIGHTS)]
        if backbone_only:
            missing = [k for k in missing if k.startswith(BACKBONE_PREFIX)]
        optional = self._optional_prefixes()
        missing = [k for k in missing if not (optional and k.startswith(optional))]
        shapes = list(incompatible.incorrect_shapes)
        if self.allow_new_classes:
            shapes = [s for s in shapes if not s[0].startswith(CLASS_DEPENDENT_PREFIX)]
        unexpected = list(incompatible.unexpected_keys)
        if missing or unexpected or shapes:
            raise WeightsMismatchError(self._path_being_loaded, missing, unexpected, shapes)


def load_detector_weights(model: torch.nn.Module, path: str) -> None:
    """Load a whole detector from ``path`` (no optimizer state): every key must fit, else
    ``FileNotFoundError`` / :class:`WeightsMismatchError` naming the file."""
    DistillCheckpointer(model, allow_new_classes=False, allow_backbone_only=False).load(path)


# Deprecated name of DistillCheckpointer, kept for one release.
HKDCheckpointer = DistillCheckpointer



def save_backbone_pkl(path: str, backbone: torch.nn.Module, author: str, **extra: Any) -> None:
    """Write ``backbone``'s weights as Detectron2 reads an ImageNet backbone, atomically.

    The file is a pickle ``{"model": {name: ndarray}, "__author__": author, "matching_heuristics":
    True, **extra}`` with the backbone's own names (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``,
    ...; BatchNorm's step counters left out), as Detectron2's ``convert-torchvision-to-d2.py``
    writes: ``MODEL.WEIGHTS`` loads it by suffix matching into ``backbone.bottom_up`` of a
    detector with the same ResNet. ``extra`` must be plain Python values.
    """
    model = {name: value.detach().cpu().numpy() for name, value in backbone.state_dict().items()
             if not name.endswith(_NOT_WEIGHTS)}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump({"model": model, "__author__": author, "matching_heuristics": True, **extra}, f)

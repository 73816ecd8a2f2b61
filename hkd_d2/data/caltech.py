"""Caltech Pedestrian: Norpix ``.seq`` videos, ``.vbb`` annotations, the standard splits.

On-disk layout of a Caltech root (as distributed)::

    <root>/set00/V000.seq ... <root>/set10/V0NN.seq          videos (JPEG frames)
    <root>/annotations/set00/V000.vbb ...                    Piotr Dollar's vbb structures
    <new_annotations>/set06_V000_I00029.txt (or .jpg.txt)    optional "new annotations"
                                                              (Zhang et al. 2016), bbGt v3

Splits: train = set00-set05, test = set06-set10; a split keeps every ``step``-th frame
starting at frame ``step - 1`` (frames 29, 59, ... for the test split: 4024 images).

Labels: ``person`` is a clean target (ignore 0); ``people``, ``person?``, ``person-fa`` are
kept with ignore 1 and their label, so the evaluator can apply dbEval's rules.
Visible boxes follow bbGt: an object that is not occluded, or whose ``posv`` is all zeros, is
fully visible; ``posv == pos`` means fully occluded (visibility 0).
"""
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import scipy.io

from ..atomic import atomic_output
from ..reading import read_mat
from .pedestrian_json import (
    PathLike,
    PedestrianDataError,
    drop_degenerate,
    make_annotation,
    save_pedestrian_json,
)

__all__ = [
    "CaltechSplit",
    "CALTECH_SPLITS",
    "CALTECH_TARGET_LABEL",
    "SeqFile",
    "write_seq",
    "VbbObject",
    "read_vbb",
    "write_vbb",
    "read_bbgt",
    "caltech_annotation",
    "caltech_image_name",
    "caltech_videos",
    "split_frames",
    "prepare_caltech",
]

logger = logging.getLogger(__name__)

# Label of a clean pedestrian; every other Caltech label becomes an ignore box.
CALTECH_TARGET_LABEL = "person"

# ---------------------------------------------------------------- Norpix .seq
SEQ_MAGIC = 0xFEED
SEQ_NAME = "Norpix seq"
SEQ_HEADER_SIZE = 1024
SEQ_VERSION = 3
SEQ_DESCRIPTION_OFFSET = 36
SEQ_IMAGE_INFO_OFFSET = 548  # width, height, bitDepth, bitDepthReal, sizeBytes, format, nFrames, pad, trueSize
SEQ_FPS_OFFSET = 584
SEQ_JPEG_FORMATS = (102, 201)  # Norpix image format ids of JPEG-compressed frames
SEQ_TIMESTAMP_BYTES = 8  # uint32 seconds + uint16 ms + uint16 us after every frame
SEQ_FRAME_PAD_BYTES = 8  # zero bytes that follow the timestamp in Caltech's files


@dataclass(frozen=True)
class CaltechSplit:
    """Sets of a split and the frame step (frames step-1, 2*step-1, ... are kept)."""

    sets: Tuple[str, ...]
    step: int


_TRAIN_SETS = tuple(f"set{i:02d}" for i in range(6))
_TEST_SETS = tuple(f"set{i:02d}" for i in range(6, 11))
CALTECH_SPLITS = {
    "train_10x": CaltechSplit(_TRAIN_SETS, 3),
    "train_1x": CaltechSplit(_TRAIN_SETS, 30),
    "test": CaltechSplit(_TEST_SETS, 30),
}


class SeqFile:
    """Random access to the JPEG frames of a Norpix ``.seq`` file.

    Attributes:
        width, height: frame size from the header.
        num_frames: frames listed in the header (all verified present on open).
        fps: frame rate from the header.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"seq file {self.path} not found") from None
        self._parse_header()
        self._offsets = self._index_frames()

    def _error(self, what: str) -> PedestrianDataError:
        return PedestrianDataError(f"{self.path}: {what}")

    def _parse_header(self) -> None:
        data = self._data
        if len(data) < SEQ_HEADER_SIZE or struct.unpack_from("<I", data, 0)[0] != SEQ_MAGIC:
            raise self._error("not a Norpix .seq file (bad magic or header shorter than 1024 bytes)")
        info = struct.unpack_from("<9I", data, SEQ_IMAGE_INFO_OFFSET)
        self.width, self.height, image_format, self.num_frames = info[0], info[1], info[5], info[6]
        (self.fps,) = struct.unpack_from("<d", data, SEQ_FPS_OFFSET)
        if image_format not in SEQ_JPEG_FORMATS:
            raise self._error(f"image format {image_format} is not JPEG (supported: {SEQ_JPEG_FORMATS})")

    def _index_frames(self) -> List[Tuple[int, int]]:
        data, offsets, pos = self._data, [], SEQ_HEADER_SIZE
        for i in range(self.num_frames):
            if pos + 4 > len(data):
                raise self._error(f"truncated: frame {i} of {self.num_frames} missing")
            (size,) = struct.unpack_from("<I", data, pos)
            end = pos + size
            if size <= 4 or end > len(data):
                raise self._error(f"truncated or corrupt: frame {i} of {self.num_frames} ends past the file")
            offsets.append((pos + 4, end))
            pos = end + SEQ_TIMESTAMP_BYTES
            if data[pos : pos + SEQ_FRAME_PAD_BYTES] == bytes(SEQ_FRAME_PAD_BYTES):
                pos += SEQ_FRAME_PAD_BYTES
        return offsets

    def __len__(self) -> int:
        return self.num_frames

    def frame_bytes(self, index: int) -> bytes:
        """The JPEG bytes of frame ``index`` (0-based)."""
        start, end = self._offsets[index]
        return self._data[start:end]

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` decoded: uint8 (H, W, 3), BGR."""
        image = cv2.imdecode(np.frombuffer(self.frame_bytes(index), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise self._error(f"frame {index} is not a decodable JPEG")
        return image

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.frame(i) for i in range(len(self)))


def _utf16_field(text: str, size: int) -> bytes:
    return text.encode("utf-16-le").ljust(size, b"\0")


def write_seq(
    path: PathLike,
    frames: Sequence[Union[bytes, np.ndarray]],
    fps: float = 30.0,
    jpeg_quality: int = 90,
) -> None:
    """Write frames (BGR uint8 (H, W, 3) arrays or JPEG bytes) as a Caltech-style ``.seq``.

    Layout as in Caltech's files: 1024-byte header (version 3, JPEG format 201), then per frame
    ``uint32 size`` (including itself), the JPEG bytes, an 8-byte timestamp and 8 zero bytes.
    """
    encoded = []
    for frame in frames:
        if isinstance(frame, np.ndarray):
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            frame = buf.tobytes()
        encoded.append(frame)
    if not encoded:
        raise ValueError(f"{path}: no frames to write")
    first = cv2.imdecode(np.frombuffer(encoded[0], np.uint8), cv2.IMREAD_COLOR)
    height, width = first.shape[:2]
    header = bytearray(SEQ_HEADER_SIZE)
    struct.pack_into("<I", header, 0, SEQ_MAGIC)
    header[4:28] = _utf16_field(SEQ_NAME, 24)
    struct.pack_into("<II", header, 28, SEQ_VERSION, SEQ_HEADER_SIZE)
    header[SEQ_DESCRIPTION_OFFSET:SEQ_IMAGE_INFO_OFFSET] = _utf16_field("No Description", 512)
    image_bytes = width * height * 3
    info = (width, height, 24, 8, image_bytes, 201, len(encoded), 0, image_bytes + 512)
    struct.pack_into("<9I", header, SEQ_IMAGE_INFO_OFFSET, *info)
    struct.pack_into("<d", header, SEQ_FPS_OFFSET, fps)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            for i, jpeg in enumerate(encoded):
                seconds, fraction = divmod(i / fps, 1.0)
                ms, us = divmod(int(round(fraction * 1e6)), 1000)
                f.write(struct.pack("<I", len(jpeg) + 4))
                f.write(jpeg)
                f.write(struct.pack("<IHH", int(seconds), ms, us))
                f.write(bytes(SEQ_FRAME_PAD_BYTES))


# ---------------------------------------------------------------- .vbb
@dataclass
class VbbObject:
    """One object in one frame: ``pos``/``posv`` are [x, y, w, h] (posv all 0 when unknown)."""

    label: str
    pos: Tuple[float, float, float, float]
    posv: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    occl: int = 0
    id: int = 0


def _scalar(value) -> float:
    return np.asarray(value).reshape(-1)[0].item()


def read_vbb(path: PathLike) -> List[List[VbbObject]]:
    """Objects of every frame of a ``.vbb`` file (``A.objLists``, labels from ``A.objLbl``)."""
    mat = read_mat(path, "vbb file", PedestrianDataError)
    if "A" not in mat:
        raise PedestrianDataError(f"{path}: no vbb structure 'A' (found {[k for k in mat if not k.startswith('__')]})")
    try:
        A = mat["A"].reshape(-1)[0]
        labels = [str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else "" for v in A["objLbl"].reshape(-1)]
        frames = []
        for objs in A["objLists"].reshape(-1):
            frame = []
            for o in np.asarray(objs).reshape(-1) if np.asarray(objs).dtype.names else []:
                obj_id = int(_scalar(o["id"]))
                frame.append(
                    VbbObject(
                        label=labels[obj_id - 1],
                        pos=tuple(float(v) for v in np.asarray(o["pos"], float).reshape(-1)[:4]),
                        posv=tuple(float(v) for v in np.asarray(o["posv"], float).reshape(-1)[:4]) or (0,) * 4,
                        occl=int(_scalar(o["occl"])),
                        id=obj_id,
                    )
                )
            frames.append(frame)
        num_frames = int(_scalar(A["nFrame"]))
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise PedestrianDataError(f"{path}: malformed vbb structure: {e!r}") from e
    if num_frames != len(frames):
        raise PedestrianDataError(f"{path}: A.nFrame={num_frames} but A.objLists has {len(frames)} frames")
    return frames


def write_vbb(path: PathLike, frames: Sequence[Sequence[VbbObject]]) -> None:
    """Write per-frame objects as a ``.vbb`` with the structure vbb.m saves.

    Each object is its own track (ids 1..maxObj in order of appearance), so ``objStr``/
    ``objEnd`` are its (1-based) frame; empty frames hold ``[]``.
    """
    obj_dtype = [("id", object), ("pos", object), ("posv", object), ("occl", object), ("lock", object)]
    obj_lists = np.empty((1, len(frames)), dtype=object)
    labels, starts = [], []
    for f, objs in enumerate(frames):
        if not objs:
            obj_lists[0, f] = np.zeros((0, 0))
            continue
        arr = np.empty((1, len(objs)), dtype=obj_dtype)
        for k, o in enumerate(objs):
            labels.append(o.label)
            starts.append(f + 1)
            arr[0, k] = (
                np.array([[len(labels)]], float),
                np.array([o.pos], float),
                np.array([o.posv], float),
                np.array([[o.occl]], float),
                np.array([[0]], float),
            )
        obj_lists[0, f] = arr
    n = len(labels)
    obj_lbl = np.empty((1, n), dtype=object)
    obj_lbl[0, :] = labels
    A = {
        "nFrame": np.array([[len(frames)]], float),
        "objLists": obj_lists,
        "maxObj": np.array([[n]], float),
        "objInit": np.ones((1, n)),
        "objLbl": obj_lbl,
        "objStr": np.array([starts], float).reshape(1, n),
        "objEnd": np.array([starts], float).reshape(1, n),
        "objHide": np.zeros((1, n)),
        "altered": np.array([[False]]),
        "log": np.array([[0.0]]),
        "logLen": np.array([[0.0]]),
    }
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, {"A": A})


# ---------------------------------------------------------------- new annotations (bbGt v3)
BBGT_HEADER = "% bbGt version=3"
BBGT_FIELDS = 12  # lbl x y w h occ xv yv wv hv ign ang


def read_bbgt(path: PathLike) -> List[Dict]:
    """Record annotations of one bbGt v3 text file (``lbl x y w h occ xv yv wv hv ign ang``).

    The file's own ``ign`` flag is kept (ORed with "label is not person").
    """
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path} not found") from None
    if not lines or not lines[0].startswith(BBGT_HEADER):
        raise PedestrianDataError(f"{path}: missing '{BBGT_HEADER}' header")
    annotations = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != BBGT_FIELDS:
            raise PedestrianDataError(f"{path}:{n}: expected {BBGT_FIELDS} fields, got {len(parts)}")
        try:
            x, y, w, h, occ, xv, yv, wv, hv, ign = (float(v) for v in parts[1:11])
        except ValueError as e:
            raise PedestrianDataError(f"{path}:{n}: {e}") from e
        obj = VbbObject(parts[0], (x, y, w, h), (xv, yv, wv, hv), int(occ))
        ann = caltech_annotation(obj)
        ann["ignore"] = int(ann["ignore"] or ign)
        annotations.append(ann)
    return annotations


# ---------------------------------------------------------------- records and splits
def caltech_annotation(obj: VbbObject) -> Dict:
    """Record annotation of one Caltech object (bbGt's visibility rules, see module doc)."""
    pos, posv = list(obj.pos), list(obj.posv)
    area = pos[2] * pos[3]
    if not obj.occl or not any(posv):
        vis_bbox, vis_ratio = pos, 1.0
    elif posv == pos:
        vis_bbox, vis_ratio = posv, 0.0
    else:
        vis_bbox, vis_ratio = posv, (posv[2] * posv[3] / area if area > 0 else 0.0)
    return make_annotation(pos, vis_bbox, obj.label != CALTECH_TARGET_LABEL, obj.label, vis_ratio)


def caltech_image_name(set_name: str, video: str, frame: int) -> str:
    """File name of an extracted frame, e.g. ``set06_V000_I00029.jpg`` (0-based frame index)."""
    return f"{set_name}_{video}_I{frame:05d}.jpg"


def caltech_videos(root: PathLike, sets: Iterable[str]) -> List[Tuple[str, str]]:
    """``(set, video)`` pairs present under ``root`` for the given sets, sorted."""
    root = Path(root)
    found = [(s, p.stem) for s in sets for p in sorted((root / s).glob("V*.seq"))]
    if not found:
        raise FileNotFoundError(f"no Caltech videos {root}/{{{','.join(sets)}}}/V*.seq found")
    return found


def split_frames(num_frames: int, step: int) -> range:
    """Frames kept by a split of frame step ``step``: step-1, 2*step-1, ... (0-based)."""
    return range(step - 1, num_frames, step)


_BBGT_NAME = re.compile(r"(set\d+)_(V\d+)_I(\d+)")


def _new_annotation_files(directory: PathLike) -> Dict[Tuple[str, str, int], Path]:
    files = {}
    for path in Path(directory).glob("*.txt"):
        match = _BBGT_NAME.match(path.name)
        if match:
            files[(match.group(1), match.group(2), int(match.group(3)))] = path
    if not files:
        raise FileNotFoundError(f"no new-annotation files set*_V*_I*.txt in {directory}")
    return files


def prepare_caltech(
    root: PathLike,
    split: str,
    out_dir: PathLike,
    new_annotations: Optional[PathLike] = None,
    step: Optional[int] = None,
    json_name: Optional[str] = None,
) -> Path:
    """Extract a split's frames to ``<out_dir>/images`` and write ``<out_dir>/<split>.json``.

    Args:
        root: Caltech root (see module doc).
        split: a key of :data:`CALTECH_SPLITS`.
        new_annotations: folder of bbGt v3 files to use instead of the ``.vbb`` boxes
            (frames without a file are skipped).
        step: override the split's frame step (e.g. 1 to keep every frame).
        json_name: output JSON name (default ``<split>.json``, ``<split>_new.json`` with
            ``new_annotations``).

    Returns:
        path of the written JSON (images are relative to ``<out_dir>/images``).
    """
    if split not in CALTECH_SPLITS:
        raise ValueError(f"unknown Caltech split {split!r}; choose from {sorted(CALTECH_SPLITS)}")
    spec = CALTECH_SPLITS[split]
    step = step or spec.step
    root, image_dir = Path(root), Path(out_dir) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    new_files = _new_annotation_files(new_annotations) if new_annotations else None
    records = []
    for set_name, video in caltech_videos(root, spec.sets):
        seq = SeqFile(root / set_name / f"{video}.seq")
        vbb_path = root / "annotations" / set_name / f"{video}.vbb"
        objects = None if new_files is not None else read_vbb(vbb_path)
        if objects is not None and len(objects) != len(seq):
            raise PedestrianDataError(f"{vbb_path}: {len(objects)} frames but {seq.path} has {len(seq)}")
        for frame in split_frames(len(seq), step):
            if new_files is not None:
                if (set_name, video, frame) not in new_files:
                    continue
                annotations = read_bbgt(new_files[(set_name, video, frame)])
            else:
                annotations = [caltech_annotation(o) for o in objects[frame]]
            path = image_dir / caltech_image_name(set_name, video, frame)
            if not path.is_file():
                with atomic_output(path) as tmp:
                    tmp.write_bytes(seq.frame_bytes(frame))
            records.append(
                {
                    "file_name": str(path.resolve()),
                    "image_id": len(records) + 1,
                    "height": seq.height,
                    "width": seq.width,
                    "annotations": drop_degenerate(annotations, f"{vbb_path}:frame {frame}"),
                }
            )
        logger.info("Caltech %s: %s/%s done (%d images so far)", split, set_name, video, len(records))
    if not records:
        raise PedestrianDataError(
            f"Caltech {split} from {root}: no frame kept (a split keeps frames {step - 1}, {2 * step - 1}, ...; "
            f"these videos are shorter or not annotated there); pass step=1 (prepare_caltech.py --step 1) to keep every frame"
        )
    name = json_name or (f"{split}_new.json" if new_annotations else f"{split}.json")
    json_file = Path(out_dir) / name
    save_pedestrian_json(records, json_file, image_dir.resolve())
    return json_file

"""``hkd-detect`` / ``tools/demo_images.py``: run a detector on images, folders and videos and draw
the detections, in the style of Detectron2's ``demo/demo.py``.

    hkd-detect --config-file student/student.yaml --input 'photos/*.jpg' street.mp4 --output out/ \\
        [--confidence-threshold 0.3] [--opts MODEL.DEVICE cpu]

Each ``--input`` is an image, a folder (its images, sorted), a glob pattern (quoted, or expanded
by the shell) or a video (annotated with :func:`hkd_d2.tools.video.annotate_video`). With one
input, ``--output`` may name the output file; otherwise it is a folder, which receives each
output under its input's file name. Without ``--output`` detections are only counted and logged.
"""
import argparse
import glob
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

from ..atomic import atomic_output
from ..engine.setup import setup_hkd_logger
from .inference import predictor_from_config
from .video import annotate_video
from .visualize import draw_detections

__all__ = ["expand_inputs", "detect_images", "main"]

logger = logging.getLogger("hkd_d2.detect")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
# Pattern characters that make an --input a glob.
GLOB_CHARS = "*?["


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files named by ``inputs`` (files, folders, glob patterns), in order, each once.

    Raises ``FileNotFoundError`` naming an input that matches no image or video.
    """
    files: List[Path] = []
    for item in inputs:
        if any(c in item for c in GLOB_CHARS):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if _is_media(Path(p))]
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).iterdir() if p.is_file() and _is_media(p))
        else:
            found = [Path(item)] if Path(item).is_file() else []
        if not found:
            raise FileNotFoundError(f"--input {item}: no image or video ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}) found")
        files += [p for p in found if p not in files]
    return files


def _output_path(source: Path, output: Optional[str], single: bool) -> Optional[Path]:
    if output is None:
        return None
    out = Path(output)
    if single and out.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        return out
    return out / source.name


def _write_image(image_bgr, path: Path) -> None:
    ok, encoded = cv2.imencode(path.suffix, image_bgr)
    if not ok:
        raise ValueError(f"Cannot encode an image as {path.suffix!r} for {path}")
    with atomic_output(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def detect_images(predictor, files: Sequence[Path], output: Optional[str], score_threshold: float,
                  max_frames: Optional[int] = None) -> List[Dict]:
    """Detect on every file (image or video), draw detections scoring >= ``score_threshold``,
    write them under ``output``; one summary dict per file (input, output, detections or frames)."""
    summaries = []
    for source in files:
        out = _output_path(source, output, single=len(files) == 1)
        if source.suffix.lower() in VIDEO_SUFFIXES:
            if out is None:
                raise ValueError(f"{source} is a video: pass --output (a folder or a video file)")
            figures = annotate_video(predictor, str(source), str(out), max_frames, score_threshold)
            logger.info("%s: %d frames, %.2f fps -> %s", source, figures["frames"], figures["end_to_end_fps"], out)
            summaries.append({"input": str(source), "output": str(out), "frames": figures["frames"]})
            continue
        image = read_image(str(source), format="BGR")
        start = time.perf_counter()
        instances = predictor(image)["instances"]
        count = int((instances.scores >= score_threshold).sum())
        logger.info("%s: detected %d instances in %.2fs", source, count, time.perf_counter() - start)
        if out is not None:
            _write_image(draw_detections(image, instances, score_threshold), out)
        summaries.append({"input": str(source), "output": str(out) if out else None, "detections": count})
    return summaries


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0].strip("`"))
    p.add_argument("--config-file", required=True, metavar="FILE",
                   help="detector config (a plain detector, e.g. an exported student.yaml)")
    p.add_argument("--input", nargs="+", required=True,
                   help="images, folders, glob patterns (e.g. 'photos/*.jpg') or videos")
    p.add_argument("--output", help="output folder, or the output file when there is one input")
    p.add_argument("--confidence-threshold", type=float, default=None,
                   help="minimum score of drawn detections (default: the config's MODEL.ROI_HEADS.SCORE_THRESH_TEST)")
    p.add_argument("--weights", default=None, help="detector weights (default: the config's MODEL.WEIGHTS)")
    p.add_argument("--max-frames", type=int, default=None, help="stop each video after this many frames")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    setup_logger(name="detectron2")
    setup_hkd_logger()
    files = expand_inputs(args.input)  # fail before building the model
    if args.output and len(files) > 1:
        os.makedirs(args.output, exist_ok=True)
    predictor, threshold = predictor_from_config(args.config_file, args.opts, args.weights, args.confidence_threshold)
    return detect_images(predictor, files, args.output, threshold, args.max_frames)


if __name__ == "__main__":
    main()

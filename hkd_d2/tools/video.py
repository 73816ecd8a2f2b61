"""Run a detector on a video file: annotated video (cv2.VideoWriter) + frames-per-second JSON.

The JSON side file (``<output>.json``) holds the frame count, the input's frame rate, and two
throughputs: the detector alone (``detector_fps``) and the whole loop with decoding, drawing and
encoding (``end_to_end_fps``).
"""
import argparse
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence

import cv2
import numpy as np
from detectron2.structures import Instances
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from ..atomic import atomic_output
from ..deploy import DeployedPredictor
from .inference import predictor_from_config
from .report import write_json
from .visualize import draw_detections

__all__ = ["open_video", "annotate_video", "main"]

logger = logging.getLogger("hkd_d2.video")

# Container codes cv2.VideoWriter uses per output suffix.
FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
# Frame rate written when the input does not report one.
DEFAULT_FPS = 25.0
# Score from which detections are drawn (a detector built from a config).
DEFAULT_SCORE_THRESHOLD = 0.5

Predictor = Callable[[np.ndarray], Dict[str, Instances]]


def open_video(path: str) -> cv2.VideoCapture:
    """A ``cv2.VideoCapture`` on ``path``; a clear error when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Input video not found: {path}")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"Cannot open {path} as a video (unsupported format or codec?)")
    return capture


@contextlib.contextmanager
def _video_writer(path: Path, fps: float, size) -> Iterator[cv2.VideoWriter]:
    """A writer on a temporary file with ``path``'s suffix (the container follows the suffix),
    moved onto ``path`` only when the block succeeds."""
    if path.suffix.lower() not in FOURCC:
        raise ValueError(f"Output {path}: unsupported suffix {path.suffix!r}; use one of {sorted(FOURCC)}")
    with atomic_output(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC[path.suffix.lower()]), fps, size)
        try:
            if not writer.isOpened():
                raise RuntimeError(f"cv2.VideoWriter cannot write {path} (codec {FOURCC[path.suffix.lower()]})")
            yield writer
        finally:
            writer.release()


def annotate_video(
    predictor: Predictor,
    input_path: str,
    output_path: str,
    max_frames: Optional[int] = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> Dict[str, float]:
    """Detect on every frame of ``input_path`` (up to ``max_frames``), write the annotated video
    to ``output_path`` and the speed figures to ``<output_path>.json``; return those figures.

    ``predictor(frame_bgr (H, W, 3) uint8) -> {"instances": Instances}`` (a DefaultPredictor or
    a :class:`~hkd_d2.deploy.DeployedPredictor`).
    """
    capture = open_video(input_path)
    try:
        fps_in = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        frames, detector_s, detections = 0, 0.0, 0
        start = time.perf_counter()
        with _video_writer(Path(output_path), fps_in, (width, height)) as writer, \
                tqdm(total=total, desc="video", unit="frame") as bar:
            while max_frames is None or frames < max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                t0 = time.perf_counter()
                instances = predictor(frame)["instances"]
                detector_s += time.perf_counter() - t0
                detections += int((instances.scores >= score_threshold).sum())
                writer.write(draw_detections(frame, instances, score_threshold))
                frames += 1
                bar.update(1)
        total_s = time.perf_counter() - start
    finally:
        capture.release()
    if frames == 0:
        raise ValueError(f"No frame could be read from {input_path}")
    figures = {
        "input": str(input_path),
        "output": str(output_path),
        "frames": frames,
        "size": [height, width],
        "input_fps": fps_in,
        "detector_fps": frames / detector_s if detector_s > 0 else float("inf"),
        "end_to_end_fps": frames / total_s,
        "detections_per_frame": detections / frames,
        "score_threshold": score_threshold,
    }
    write_json(f"{output_path}.json", figures)
    return figures


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", help="detector config (a plain detector; export HKD students first)")
    model.add_argument("--exported", help="exported student (student.ts / student.onnx / student.int8.onnx)")
    p.add_argument("--weights", default=None,
                   help="detector weights (default: the config's MODEL.WEIGHTS, relative to the config)")
    p.add_argument("--device", default="cpu", help="device of an --exported student (cpu or cuda)")
    p.add_argument("--input", required=True, help="input video, e.g. /usr/share/doc/opencv-doc/examples/data/vtest.avi")
    p.add_argument("--output", required=True, help="annotated video (.mp4, .avi or .mkv)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detections drawn from this score on (default: the config's MODEL.ROI_HEADS.SCORE_THRESH_TEST; "
                        "an --exported student's own deployment threshold)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (e.g. MODEL.DEVICE cpu)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    setup_logger(name="hkd_d2")
    open_video(args.input).release()  # fail before building the model
    if args.exported:
        predictor = DeployedPredictor(args.exported, args.score_threshold, args.device)
        threshold = predictor.model.score_threshold
    else:
        predictor, threshold = predictor_from_config(args.config_file, args.opts, args.weights, args.score_threshold)
    figures = annotate_video(predictor, args.input, args.output, args.max_frames, threshold)
    print(f"{figures['frames']} frames: detector {figures['detector_fps']:.2f} fps, "
          f"end to end {figures['end_to_end_fps']:.2f} fps -> {args.output} (+ .json)")
    return figures


if __name__ == "__main__":
    main()

"""Generated texture-classification images: the pre-training task of :mod:`hkd_d2.tools.pretrain`.

A class is a texture: a family (stripes, waves, checker, dots, grid, rings, blobs) at an
orientation and a scale (``CLASSES``; 32 in all). Each image is covered by its class texture in
two random contrasting colours (random phase, period and angle jittered), under a smooth random
illumination; in front of it stand a few shapes (circle, ring, star, arrow, ...: ``SHAPES``) in
random colours at random places, sizes and rotations, and a few lines; then a random brightness
/ contrast change and pixel noise. The label is the texture: oriented, periodic patterns spread
over the image are what a convolutional network learns within a few hundred steps (its first
layers become oriented edge and frequency detectors, as on ImageNet), while the shapes in front
give it object outlines and occlusions to see past. A texture confined to one shape over a
cluttered background, or the shape itself as the label, is learned far more slowly.

The task is unlike the pedestrian scenes of :mod:`hkd_d2.data.synthetic` on purpose: square
images, saturated colours drawn from the whole RGB cube, periodic textures, no people, no
street, no horizon. A backbone must learn pedestrians on the detection data, as an ImageNet
backbone must.

Every image is a deterministic function of ``(seed, split, index)``; labels are balanced
(``index % num_classes``).
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

__all__ = ["FAMILIES", "CLASSES", "MAX_CLASSES", "SHAPES", "SPLITS", "TextureConfig", "class_name",
           "render_texture_image", "generate_textures"]

# Split name -> id mixed into each image's seed (the splits never share an image).
SPLITS = {"train": 0, "val": 1}
SCALES = {"fine": 0.12, "coarse": 0.25}  # texture period / image size
PERIOD_JITTER = (0.85, 1.15)  # multiplier on the period (uniform)
ANGLE_JITTER = 0.08  # std of the orientation noise (radians)
OCCLUDERS = (0, 3)  # shapes in front of the texture (uniform, exclusive top)
OCCLUDER_RADIUS = (0.12, 0.28)  # shape radius / image size (uniform)
LINES = (0, 4)  # lines in front of the texture (uniform, exclusive top)
MIN_CONTRAST = 150  # L1 distance (grey levels, 3 channels) between the two texture colours, at least
LIGHT_CELLS = 3  # cells per side of the illumination's random grid
LIGHT_RANGE = (0.6, 1.3)  # illumination gain at the grid cells (uniform)
GAIN_RANGE = (0.6, 1.3)  # global contrast gain
BIAS_RANGE = (-40, 40)  # global brightness shift (grey levels)
NOISE_RANGE = (0.0, 12.0)  # std of the per-pixel noise (grey levels)
CIRCLE_POINTS = 48  # vertices of a drawn circle
DOT_RADIUS2 = 0.08  # squared dot radius / squared period
GRID_GAP = 0.2  # grid line width / period
WAVE_AMPLITUDE = 0.25  # wave amplitude / period


def _stripes(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return u % 1.0 < 0.5


def _waves(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (u + WAVE_AMPLITUDE * np.sin(2 * math.pi * v)) % 1.0 < 0.5


def _checker(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (np.floor(u) + np.floor(v)) % 2 == 0


def _dots(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (u % 1.0 - 0.5) ** 2 + (v % 1.0 - 0.5) ** 2 < DOT_RADIUS2


def _grid(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (u % 1.0 < GRID_GAP) | (v % 1.0 < GRID_GAP)


def _rings(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = rng.uniform(u.min(), u.max()), rng.uniform(v.min(), v.max())
    return np.hypot(u - centre[0], v - centre[1]) % 1.0 < 0.5


def _blobs(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thresholded smooth noise with blobs about one period across."""
    cells = max(2, int(math.ceil(max(u.max() - u.min(), v.max() - v.min()))) + 1)
    noise = cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32), u.shape[::-1],
                       interpolation=cv2.INTER_CUBIC)
    return noise > 0


# Texture family -> (binary pattern of coordinates in periods, orientations (radians) it comes in).
FAMILIES: Dict[str, Tuple[Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray], Tuple[float, ...]]] = {
    "stripes": (_stripes, (0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)),
    "waves": (_waves, (0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)),
    "checker": (_checker, (0, math.pi / 4)),
    "dots": (_dots, (0, math.pi / 4)),
    "grid": (_grid, (0, math.pi / 4)),
    "rings": (_rings, (0,)),
    "blobs": (_blobs, (0,)),
}
# Classes (family, orientation index, scale), ordered so that a prefix (fewer --classes) keeps
# every family at both scales before adding orientations.
CLASSES: List[Tuple[str, int, str]] = [
    (family, k, scale)
    for k in range(max(len(o) for _, o in FAMILIES.values()))
    for scale in SCALES
    for family, (_, orientations) in FAMILIES.items() if k < len(orientations)
]
MAX_CLASSES = len(CLASSES)


def _circle(radius: float = 1.0, centre: Tuple[float, float] = (0.0, 0.0), start: float = 0.0,
            end: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, end, CIRCLE_POINTS, endpoint=end - start < 2 * math.pi)
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], 1)


def _regular(sides: int, inner: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    """A regular polygon, or a star when ``inner`` < 1 (every other vertex at radius ``inner``)."""
    points = sides * (1 if inner == 1.0 else 2)
    t = phase + 2 * math.pi * np.arange(points) / points
    r = np.where(np.arange(points) % 2 == 0, 1.0, inner) if inner != 1.0 else np.ones(points)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


# Occluder shape -> (filled polygons, cut-out polygons) in unit coordinates (radius 1 around the origin).
SHAPES: Dict[str, Tuple[List[np.ndarray], List[np.ndarray]]] = {
    "circle": ([_circle()], []),
    "ring": ([_circle()], [_circle(0.45)]),
    "crescent": ([_circle()], [_circle(0.8, (0.5, 0.0))]),
    "half-disc": ([_circle(1.0, (0.0, 0.3), math.pi, 2 * math.pi)], []),
    "triangle": ([_regular(3)], []),
    "square": ([_regular(4, phase=math.pi / 4)], []),
    "hexagon": ([_regular(6)], []),
    "star": ([_regular(5, inner=0.5)], []),
    "cross": ([np.array([[-0.35, -1], [0.35, -1], [0.35, -0.35], [1, -0.35], [1, 0.35], [0.35, 0.35], [0.35, 1],
                         [-0.35, 1], [-0.35, 0.35], [-1, 0.35], [-1, -0.35], [-0.35, -0.35]])], []),
    "arrow": ([np.array([[-1, -0.35], [0.2, -0.35], [0.2, -0.85], [1, 0], [0.2, 0.85], [0.2, 0.35], [-1, 0.35]])], []),
}


@dataclass(frozen=True)
class TextureConfig:
    """What :func:`render_texture_image` draws."""

    num_classes: int = MAX_CLASSES  # texture classes, 2..MAX_CLASSES (the first of CLASSES)
    size: int = 48  # images are size x size px
    seed: int = 0  # every image is a function of (seed, split, index)

    def __post_init__(self):
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in 2..{MAX_CLASSES} (texture classes), got {self.num_classes}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 px, got {self.size}")


def class_name(label: int) -> str:
    """``"stripes 45deg coarse"`` for the class ``label``."""
    family, k, scale = CLASSES[label]
    orientations = FAMILIES[family][1]
    angle = f" {round(math.degrees(orientations[k]))}deg" if len(orientations) > 1 else ""
    return f"{family}{angle} {scale}"


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _illumination(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 1) float32: a smooth random gain (uneven lighting)."""
    grid = rng.uniform(*LIGHT_RANGE, (LIGHT_CELLS, LIGHT_CELLS)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]


def _texture(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) bool: the class texture at a random phase, its period and angle jittered."""
    family, k, scale = CLASSES[label]
    pattern, orientations = FAMILIES[family]
    angle = orientations[k] + rng.normal(0, ANGLE_JITTER)
    period = SCALES[scale] * size * rng.uniform(*PERIOD_JITTER)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / period
    u = x * math.cos(angle) + y * math.sin(angle) + rng.uniform(0, 1)
    v = -x * math.sin(angle) + y * math.cos(angle) + rng.uniform(0, 1)
    return pattern(u, v, rng)


def _draw_occluder(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a random shape in a random colour at a random place, radius and rotation, in place."""
    size = img.shape[0]
    radius = rng.uniform(*OCCLUDER_RADIUS) * size
    centre = rng.uniform(0, size, 2)
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    mask = np.zeros((size, size), np.uint8)
    filled, cut = SHAPES[list(SHAPES)[rng.integers(len(SHAPES))]]
    for polygons, value in ((filled, 1), (cut, 0)):
        if polygons:
            cv2.fillPoly(mask, [np.round(p @ rotation.T * radius + centre).astype(np.int32) for p in polygons], value)
    img[mask.astype(bool)] = _colour(rng)


def render_texture_image(cfg: TextureConfig, split: str, index: int) -> Tuple[np.ndarray, int]:
    """Image ``index`` of ``split`` ("train" / "val"): BGR uint8 (size, size, 3) and its label."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([cfg.seed, SPLITS[split], index])
    label = index % cfg.num_classes
    first, second = _colour(rng), _colour(rng)
    if np.abs(first - second).sum() < MIN_CONTRAST:
        second = 255 - first
    img = np.where(_texture(label, cfg.size, rng)[..., None], first, second) * _illumination(cfg.size, rng)
    for _ in range(int(rng.integers(*OCCLUDERS))):
        _draw_occluder(img, rng)
    for _ in range(int(rng.integers(*LINES))):
        ends = [tuple(int(v) for v in rng.integers(0, cfg.size, 2)) for _ in range(2)]
        cv2.line(img, ends[0], ends[1], tuple(float(c) for c in _colour(rng)), int(rng.integers(1, 3)))
    img = img * rng.uniform(*GAIN_RANGE) + rng.uniform(*BIAS_RANGE) + rng.normal(0, rng.uniform(*NOISE_RANGE), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def generate_textures(cfg: TextureConfig, split: str, count: int, first: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``first .. first + count - 1`` of ``split``: uint8 (count, size, size, 3) BGR and int64 labels (count,)."""
    images = np.empty((count, cfg.size, cfg.size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    for i in range(count):
        images[i], labels[i] = render_texture_image(cfg, split, first + i)
    return images, labels

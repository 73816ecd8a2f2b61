"""Generated street scenes with pedestrians, written in the real CityPersons and Caltech formats.

No pedestrian data set can be downloaded where this project is developed, so the data
pipeline is exercised on scenes drawn with OpenCV: articulated walking figures (head,
torso, arms, legs; clothing colours and stripes), Caltech-like heights (log-normal, many
30-80 px at 480 px image height, a few up to ~300 px), the 0.41 width/height box aspect,
occluders (cars/fences from below, walls from the side) with visible boxes, groups,
riders, sitting people, posters of people, far-away crowds as ignore regions, and clutter
that looks like people to a detector (poles, trees, bins, signs).

Output tree (``--format both``)::

    <out>/citypersons/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    <out>/citypersons/annotations/anno_{train,val}.mat
    <out>/citypersons/ground_truth_{train,val}.json   (file names relative to leftImg8bit/<split>)
    <out>/caltech/setXX/VYYY.seq, <out>/caltech/annotations/setXX/VYYY.vbb
    <out>/caltech/ground_truth_{train,test}.json      (file names as prepare_caltech extracts them)

Every image is drawn from its own generator seeded by (seed, split, index): the output
depends only on the arguments, not on the number of worker processes. Box coordinates are
integers, so every format stores them exactly.

CLI: ``python -m hkd_d2.data.synthetic --out DIR --num-train N --num-val M``.
"""
import argparse
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .caltech import CALTECH_SPLITS, VbbObject, caltech_image_name, prepare_caltech, write_seq, write_vbb
from .citypersons import write_citypersons_mat
from ..atomic import atomic_output
from .pedestrian_json import make_annotation, save_pedestrian_json

__all__ = ["SyntheticConfig", "SceneObject", "render_scene", "generate_synthetic", "main"]

logger = logging.getLogger(__name__)

# Scene object kinds -> label in each format. Only "pedestrian" is a clean target (ignore 0).
KIND_LABELS = {
    "pedestrian": {"citypersons": 1, "caltech": "person"},
    "rider": {"citypersons": 2, "caltech": "person?"},
    "sitting": {"citypersons": 3, "caltech": "person?"},
    "other": {"citypersons": 4, "caltech": "person-fa"},
    "group": {"citypersons": 5, "caltech": "people"},
    "ignore": {"citypersons": 0, "caltech": "people"},
}
TARGET_KIND = "pedestrian"
FORMATS = ("citypersons", "caltech")
SPLITS = {"citypersons": ("train", "val"), "caltech": ("train", "test")}
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau", "munster")
CITYPERSONS_LABEL_NAMES = {
    0: "ignore region", 1: "pedestrian", 2: "rider", 3: "sitting person", 4: "other person", 5: "people group",
}
PERSON_ASPECT = 0.41  # width / height of every person box (Caltech / CityPersons alignment)
REFERENCE_HEIGHT = 480  # image height at which the height distribution below is specified
# Fast PNG writing (zlib level 1, "sub" filter): about 2x faster than OpenCV's default.
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
NOISE_AMPLITUDE = 8  # +- grey levels of the per-image sensor noise


@dataclass
class SyntheticConfig:
    """How scenes are drawn. Pixel sizes are for a 480 px high image and scale with ``height``."""

    width: int = 640
    height: int = 480
    seed: int = 0
    # Person heights: log-normal with this median and log-std (px at 480), clipped to [min, max].
    height_median: float = 50.0
    height_log_std: float = 0.55
    min_person_height: float = 20.0
    max_person_height: float = 300.0
    # Extra multiplier on every person height (scale distribution option).
    scale: float = 1.0
    # Number of people-like objects per image (uniform, inclusive).
    objects_per_image: Tuple[int, int] = (1, 8)
    # Relative frequency of each object kind.
    kind_weights: Dict[str, float] = field(
        default_factory=lambda: {
            "pedestrian": 0.64, "rider": 0.08, "sitting": 0.05, "other": 0.05, "group": 0.08, "ignore": 0.10,
        }
    )
    # Probability that a pedestrian is partly hidden by an occluder, and the hidden fraction range.
    occlusion_prob: float = 0.35
    occlusion_range: Tuple[float, float] = (0.2, 0.75)
    # Number of hard-negative clutter objects (poles, trees, bins, signs) per image.
    clutter_per_image: Tuple[int, int] = (4, 12)
    # Caltech output: frames per .seq video and JPEG quality.
    frames_per_video: int = 100
    jpeg_quality: int = 90


@dataclass
class SceneObject:
    """One annotated object: kind (key of KIND_LABELS), integer full and visible boxes (XYWH)."""

    kind: str
    box: Tuple[int, int, int, int]
    vis_box: Tuple[int, int, int, int]

    @property
    def occluded(self) -> bool:
        return self.vis_box != self.box


# ------------------------------------------------------------------ drawing
def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _shade(color: Sequence[int], factor: float) -> Tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in color)


SKIN_TONES = ((60, 90, 140), (90, 130, 190), (120, 160, 220), (45, 65, 100), (150, 185, 230))


def _pt(x: float, y: float) -> Tuple[int, int]:
    return int(round(x)), int(round(y))


def draw_figure(img: np.ndarray, box: Sequence[float], rng: np.random.Generator, pose: str = "walk",
                palette: Optional[Dict] = None) -> None:
    """Draw an articulated person filling ``box`` (x, y, w, h) on BGR ``img`` in place.

    ``pose`` is "walk" (legs/arms swinging with a random gait phase), "sit" (thighs forward)
    or "ride" (bent legs on pedals, arms forward).
    """
    x, y, w, h = box
    cx = x + w / 2
    if palette is None:
        palette = {
            "skin": SKIN_TONES[rng.integers(len(SKIN_TONES))],
            "shirt": _color(rng),
            "pants": _color(rng, 0, 140),
            "hair": _color(rng, 0, 90),
            "shoes": _color(rng, 0, 60),
            "stripes": _color(rng) if rng.random() < 0.35 else None,
        }
    phase = rng.uniform(0, 2 * math.pi)
    facing = rng.uniform(-1, 1)  # -1 facing left .. 1 facing right; 0 frontal
    stride = 0.17 * h * math.sin(phase) * (0.4 + 0.6 * abs(facing))
    limb = max(1, int(0.065 * h))
    arm = max(1, int(0.045 * h))
    head_r = max(1, int(0.065 * h))
    shoulder_y, hip_y, foot_y = y + 0.17 * h, y + 0.52 * h, y + h - 0.02 * h
    half_shoulder = 0.06 * h + 0.05 * h * (1 - abs(facing))
    half_hip = 0.05 * h + 0.03 * h * (1 - abs(facing))
    back, front = (-1, 1) if facing >= 0 else (1, -1)
    dark_pants, dark_shirt = _shade(palette["pants"], 0.7), _shade(palette["shirt"], 0.7)

    def leg(sign: float, color) -> None:
        hip = (cx + sign * half_hip * 0.5, hip_y)
        if pose == "walk":
            foot = (cx + sign * stride, foot_y)
            knee = ((hip[0] + foot[0]) / 2 + 0.03 * h * facing, (hip_y + foot_y) / 2)
        elif pose == "sit":
            knee = (cx + 0.16 * h * (1 if facing >= 0 else -1), hip_y + 0.02 * h)
            foot = (knee[0], foot_y)
        else:  # ride: pedal circle
            pedal = (cx + 0.08 * h * math.cos(phase + (sign > 0) * math.pi), foot_y - 0.08 * h
                     + 0.06 * h * math.sin(phase + (sign > 0) * math.pi))
            knee = (cx + 0.12 * h * (1 if facing >= 0 else -1), hip_y + 0.12 * h)
            foot = pedal
        cv2.line(img, _pt(*hip), _pt(*knee), color, limb)
        cv2.line(img, _pt(*knee), _pt(*foot), color, limb)
        cv2.line(img, _pt(*foot), _pt(foot[0] + 0.04 * h * (1 if facing >= 0 else -1), foot[1]),
                 palette["shoes"], max(1, limb // 2 + 1))

    def arm_draw(sign: float, color) -> None:
        shoulder = (cx + sign * half_shoulder, shoulder_y + 0.02 * h)
        if pose == "ride":
            hand = (cx + 0.18 * h * (1 if facing >= 0 else -1), shoulder_y + 0.2 * h)
        else:
            hand = (cx + sign * half_shoulder * 1.1 - 0.6 * stride * sign * back, hip_y + 0.02 * h)
        elbow = ((shoulder[0] + hand[0]) / 2 + sign * 0.02 * h, (shoulder[1] + hand[1]) / 2)
        cv2.line(img, _pt(*shoulder), _pt(*elbow), color, arm)
        cv2.line(img, _pt(*elbow), _pt(*hand), color, arm)
        cv2.circle(img, _pt(*hand), max(1, arm // 2), palette["skin"], -1)

    leg(back, dark_pants)
    arm_draw(back, dark_shirt)
    torso = np.array([_pt(cx - half_shoulder, shoulder_y), _pt(cx + half_shoulder, shoulder_y),
                      _pt(cx + half_hip, hip_y + 0.03 * h), _pt(cx - half_hip, hip_y + 0.03 * h)], np.int32)
    cv2.fillPoly(img, [torso], palette["shirt"])
    if palette["stripes"] is not None and h >= 40:
        for t in np.linspace(0.2, 0.85, 4):
            sy = shoulder_y + t * (hip_y - shoulder_y)
            half = half_shoulder + t * (half_hip - half_shoulder)
            cv2.line(img, _pt(cx - half, sy), _pt(cx + half, sy), palette["stripes"], max(1, int(0.015 * h)))
    leg(front, palette["pants"])
    arm_draw(front, palette["shirt"])
    neck_top = y + 0.12 * h
    cv2.line(img, _pt(cx, neck_top), _pt(cx, shoulder_y), palette["skin"], max(1, arm))
    head = _pt(cx + 0.01 * h * facing, y + head_r + 1)
    cv2.ellipse(img, head, (max(1, int(head_r * 0.85)), head_r), 0, 0, 360, palette["skin"], -1)
    cv2.ellipse(img, head, (max(1, int(head_r * 0.9)), head_r), 0, 180, 360, palette["hair"], -1)


def _draw_background(img: np.ndarray, rng: np.random.Generator, horizon: int) -> None:
    H, W = img.shape[:2]
    sky = np.array(_color(rng, 120, 255), np.float32)
    column = (sky * np.linspace(0.75, 1.0, horizon)[:, None, None]).astype(np.uint8)
    img[:horizon] = cv2.resize(column, (W, horizon), interpolation=cv2.INTER_NEAREST)
    img[horizon:] = _color(rng, 60, 140)  # road / pavement
    x = int(rng.integers(-W // 10, 0))
    while x < W:  # building facades with windows along the horizon
        bw, bh = int(rng.integers(W // 10, W // 3)), int(rng.integers(horizon // 3, horizon + 1))
        color = _color(rng, 40, 220)
        cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon + H // 40), color, -1)
        win, gap = max(2, bw // 10), max(3, bw // 6)
        win_color = _shade(color, rng.uniform(0.3, 0.6))
        for wy in range(horizon - bh + gap, horizon - gap, gap + win):
            for wx in range(x + gap // 2, x + bw - win, gap):
                cv2.rectangle(img, (wx, wy), (wx + win, wy + win), win_color, -1)
        x += bw
    curb = horizon + int(rng.integers(H // 20, H // 8))
    cv2.rectangle(img, (0, horizon + H // 40), (W, curb), _color(rng, 90, 180), -1)  # sidewalk
    for _ in range(int(rng.integers(2, 6))):  # lane markings
        lx, ly = int(rng.integers(0, W)), int(rng.integers(curb, H))
        cv2.line(img, (lx, ly), (lx + W // 12, ly), (230, 230, 230), max(1, H // 160))


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, horizon: int, person_height) -> None:
    """Hard negatives: vertical structures of pedestrian-like size and aspect."""
    H, W = img.shape[:2]
    for _ in range(int(rng.integers(*person_height["clutter"]) )):
        h = person_height["sample"]() * rng.uniform(0.8, 2.5)
        foot = min(H - 1, horizon + h * rng.uniform(0.3, 0.9))
        x = rng.uniform(0, W)
        kind = rng.integers(4)
        color = _color(rng, 20, 200)
        if kind == 0:  # pole with lamp or sign
            t = max(1, int(h * 0.04))
            cv2.rectangle(img, _pt(x, foot - h), _pt(x + t, foot), color, -1)
            if rng.random() < 0.5:
                cv2.circle(img, _pt(x + t / 2, foot - h), max(1, int(h * 0.06)), _color(rng), -1)
            else:
                cv2.rectangle(img, _pt(x - h * 0.1, foot - h), _pt(x + h * 0.12, foot - h * 0.8), _color(rng), -1)
        elif kind == 1:  # tree
            cv2.rectangle(img, _pt(x, foot - h * 0.6), _pt(x + h * 0.07, foot), (30, 60, 90), -1)
            cv2.ellipse(img, _pt(x + h * 0.035, foot - h * 0.75), (max(1, int(h * 0.25)), max(1, int(h * 0.3))),
                        0, 0, 360, (int(rng.integers(20, 80)), int(rng.integers(90, 180)), 40), -1)
        elif kind == 2:  # bin / bollard with a round top (head-like)
            bw = h * 0.3
            cv2.rectangle(img, _pt(x, foot - h * 0.5), _pt(x + bw, foot), color, -1)
            cv2.ellipse(img, _pt(x + bw / 2, foot - h * 0.5), (max(1, int(bw / 2)), max(1, int(bw / 4))),
                        0, 180, 360, _shade(color, 0.8), -1)
        else:  # narrow door / dark vertical slab of person aspect
            cv2.rectangle(img, _pt(x, foot - h), _pt(x + h * PERSON_ASPECT, foot), _shade(color, 0.5), -1)


def _draw_occluder(img: np.ndarray, rng: np.random.Generator, rect: Tuple[int, int, int, int], side: str) -> None:
    x0, y0, x1, y1 = rect
    color = _color(rng, 20, 230)
    cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
    if side == "bottom":  # car body / fence: add a stripe and wheels or posts
        cv2.line(img, (x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2), _shade(color, 0.6), max(1, (y1 - y0) // 8))
        for wx in (x0 + (x1 - x0) // 5, x1 - (x1 - x0) // 5):
            cv2.circle(img, (wx, y1), max(1, (y1 - y0) // 4), (25, 25, 25), -1)
    else:
        cv2.line(img, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), _shade(color, 0.7), max(1, (x1 - x0) // 6))


# ------------------------------------------------------------------ scene layout
def _person_box(rng: np.random.Generator, cfg: SyntheticConfig, h: float, horizon: int) -> Optional[Tuple[int, int, int, int]]:
    H, W = cfg.height, cfg.width
    h = int(round(h))
    w = int(round(PERSON_ASPECT * h))
    if w < 1 or h + 1 >= H or w + 1 >= W:
        return None
    foot = int(round(min(H - 1, horizon + h * rng.uniform(0.35, 0.6))))
    y = foot - h
    x = int(rng.integers(0, W - w))
    return (x, y, w, h) if y >= 0 else None


def _overlaps(a: Tuple[int, int, int, int], others: List[Tuple[int, int, int, int]]) -> bool:
    ax0, ay0, ax1, ay1 = a
    return any(ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1 for bx0, by0, bx1, by1 in others)


def _occlusion(rng: np.random.Generator, cfg: SyntheticConfig, box) -> Tuple[Tuple, Tuple, str]:
    """(visible box, occluder rectangle x0,y0,x1,y1, side) for an occluded person box."""
    x, y, w, h = box
    frac = rng.uniform(*cfg.occlusion_range)
    if rng.random() < 0.7 or w < 4:
        hidden = max(1, int(round(h * frac)))
        margin = int(w * rng.uniform(0.3, 1.5))
        rect = (max(0, x - margin), y + h - hidden, min(cfg.width - 1, x + w + margin), min(cfg.height - 1, y + h + h // 10))
        return (x, y, w, h - hidden), rect, "bottom"
    hidden = max(1, min(w - 1, int(round(w * frac))))
    top = y - int(h * rng.uniform(0.1, 0.5))
    if rng.random() < 0.5:
        rect = (max(0, x - w // 2), max(0, top), x + hidden - 1, y + h + h // 20)
        return (x + hidden, y, w - hidden, h), rect, "left"
    rect = (x + w - hidden, max(0, top), min(cfg.width - 1, x + w + w // 2), y + h + h // 20)
    return (x, y, w - hidden, h), rect, "right"


def render_scene(cfg: SyntheticConfig, split_id: int, index: int) -> Tuple[np.ndarray, List[SceneObject]]:
    """Draw image ``index`` of split ``split_id``: BGR uint8 (H, W, 3) and its objects.

    Deterministic in (cfg.seed, split_id, index).
    """
    rng = np.random.default_rng([cfg.seed, split_id, index])
    H, W = cfg.height, cfg.width
    unit = H / REFERENCE_HEIGHT * cfg.scale
    img = np.empty((H, W, 3), np.uint8)
    horizon = int(H * rng.uniform(0.35, 0.5))

    def sample_height() -> float:
        h = rng.lognormal(math.log(cfg.height_median), cfg.height_log_std)
        return float(np.clip(h, cfg.min_person_height, cfg.max_person_height)) * unit

    _draw_background(img, rng, horizon)
    _draw_clutter(img, rng, horizon, {"sample": sample_height, "clutter": (cfg.clutter_per_image[0], cfg.clutter_per_image[1] + 1)})

    kinds = list(cfg.kind_weights)
    weights = np.array([cfg.kind_weights[k] for k in kinds], float)
    plans, taken = [], []
    for _ in range(int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        plan = _plan_object(rng, cfg, kind, sample_height(), horizon, unit)
        if plan is not None and not _overlaps(plan["extent"], taken):
            taken.append(plan["extent"])
            plans.append(plan)
    objects = []
    for plan in sorted(plans, key=lambda p: p["object"].box[1] + p["object"].box[3]):  # far to near
        plan["draw"](img, rng)
        objects.append(plan["object"])
    return _photometric(img, rng), objects


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global gain, blocky sensor noise and a slight blur (uint8 OpenCV ops only, for speed)."""
    H, W = img.shape[:2]
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.7, 1.15))
    noise = rng.integers(0, 2 * NOISE_AMPLITUDE + 1, (H // 4 + 1, W // 4 + 1), dtype=np.uint8)
    noise = cv2.cvtColor(cv2.resize(noise, (W, H), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)
    img = cv2.subtract(cv2.add(img, noise), (NOISE_AMPLITUDE,) * 3 + (0,))
    return cv2.GaussianBlur(img, (3, 3), 0)


def _extent(box: Tuple[int, int, int, int], extra: Optional[Tuple[int, int, int, int]] = None):
    x, y, w, h = box
    x0, y0, x1, y1 = x, y, x + w, y + h
    if extra is not None:
        x0, y0, x1, y1 = min(x0, extra[0]), min(y0, extra[1]), max(x1, extra[2] + 1), max(y1, extra[3] + 1)
    return x0, y0, x1, y1


def _plan_object(rng, cfg: SyntheticConfig, kind: str, h: float, horizon: int, unit: float) -> Optional[Dict]:
    """Layout (boxes, extent) and a drawing closure for one object of ``kind``, or None if it does not fit."""
    if kind == "group":
        box = _person_box(rng, cfg, h, horizon)
        n = int(rng.integers(3, 6))
        if box is None or box[0] + box[2] * (n + 1) // 2 >= cfg.width:
            return None
        x, y, w, hh = box
        members = [(x + i * w // 2, y + int(rng.integers(0, max(1, hh // 12))), w, hh) for i in range(n)]
        gx1 = max(m[0] + m[2] for m in members)
        gy1 = max(m[1] + m[3] for m in members)
        group = (x, y, gx1 - x, gy1 - y)
        if gy1 >= cfg.height:
            return None

        def draw(img, r):
            for m in members:
                draw_figure(img, m, r)

        return {"object": SceneObject(kind, group, group), "extent": _extent(group), "draw": draw}
    if kind == "ignore":  # a far-away crowd: many tiny figures, one ignore box around them
        h = max(6.0, 18 * unit * rng.uniform(0.6, 1.2))
        box = _person_box(rng, cfg, h, horizon)
        if box is None:
            return None
        x, y, w, hh = box
        n = int(rng.integers(4, 10))
        region = (x, y, min(cfg.width - 1 - x, w * (n + 1) // 2), hh)

        def draw(img, r):
            for i in range(n):
                if x + i * (w // 2) + w <= x + region[2]:
                    draw_figure(img, (x + i * (w // 2), y, w, hh), r)

        return {"object": SceneObject(kind, region, region), "extent": _extent(region), "draw": draw}
    box = _person_box(rng, cfg, h, horizon)
    if box is None:
        return None
    if kind == "rider":
        x, y, w, hh = box
        r_wheel = max(1, int(0.2 * hh))
        wheels = [(x - int(0.1 * hh), y + hh - r_wheel), (x + w + int(0.1 * hh), y + hh - r_wheel)]
        extra = (wheels[0][0] - r_wheel, y, wheels[1][0] + r_wheel, y + hh)
        if extra[0] < 0 or extra[2] >= cfg.width:
            return None

        def draw(img, r):
            frame_color = _color(r, 0, 255)
            for c in wheels:
                cv2.circle(img, c, r_wheel, (20, 20, 20), max(1, r_wheel // 5))
            cv2.line(img, wheels[0], (x + w // 2, y + hh - r_wheel), frame_color, max(1, hh // 40))
            cv2.line(img, wheels[1], (x + w // 2, y + int(0.5 * hh)), frame_color, max(1, hh // 40))
            draw_figure(img, box, r, pose="ride")

        return {"object": SceneObject(kind, box, box), "extent": _extent(box, extra), "draw": draw}
    if kind == "sitting":
        x, y, w, hh = box

        def draw(img, r):
            cv2.rectangle(img, (x - w // 3, y + int(0.55 * hh)), (x + w + w // 3, y + int(0.62 * hh)), _color(r, 40, 160), -1)
            draw_figure(img, box, r, pose="sit")

        extra = (x - w // 3, y, x + w + w // 3, y + hh)
        return {"object": SceneObject(kind, box, box), "extent": _extent(box, extra), "draw": draw}
    if kind == "other":  # a person on a poster / a mannequin: flat grey figure on a board
        x, y, w, hh = box
        board = (x - w // 4, y - hh // 20, x + w + w // 4, y + hh)

        def draw(img, r):
            cv2.rectangle(img, board[:2], board[2:], _color(r, 150, 255), -1)
            tone = int(r.integers(40, 200))
            flat = {k: (tone, tone, tone) for k in ("skin", "shirt", "pants", "hair", "shoes")}
            flat["stripes"] = None
            draw_figure(img, box, r, palette=flat)

        return {"object": SceneObject(kind, box, box), "extent": _extent(box, board), "draw": draw}
    # pedestrian, possibly occluded
    if rng.random() < cfg.occlusion_prob and box[3] >= 8:
        vis, rect, side = _occlusion(rng, cfg, box)

        def draw(img, r):
            draw_figure(img, box, r)
            _draw_occluder(img, r, rect, side)

        return {"object": SceneObject(kind, box, vis), "extent": _extent(box, rect), "draw": draw}
    return {"object": SceneObject(kind, box, box), "extent": _extent(box), "draw": lambda img, r: draw_figure(img, box, r)}


# ------------------------------------------------------------------ writing
def _render_task(args) -> Tuple[int, List[SceneObject], Optional[bytes], Optional[bytes]]:
    """Worker: render one image, return PNG bytes (CityPersons) and JPEG bytes (Caltech)."""
    cfg, split_id, index, formats = args
    img, objects = render_scene(cfg, split_id, index)
    png = cv2.imencode(".png", img, PNG_OPTIONS)[1].tobytes() \
        if "citypersons" in formats else None
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])[1].tobytes() \
        if "caltech" in formats else None
    return index, objects, png, jpg


def _record(file_name: str, cfg: SyntheticConfig, image_id: int, objects: List[SceneObject], fmt: str) -> Dict:
    annotations = []
    for o in objects:
        label = KIND_LABELS[o.kind][fmt]
        name = CITYPERSONS_LABEL_NAMES[label] if fmt == "citypersons" else label
        annotations.append(make_annotation(o.box, o.vis_box, o.kind != TARGET_KIND, name))
    return {"file_name": file_name, "image_id": image_id, "height": cfg.height, "width": cfg.width,
            "annotations": annotations}


def _citypersons_row(o: SceneObject, instance_id: int) -> List[int]:
    return [KIND_LABELS[o.kind]["citypersons"], *o.box, instance_id, *o.vis_box]


def _write_citypersons(root: Path, split: str, results, cfg: SyntheticConfig) -> List[Dict]:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    entries, records = [], []
    for index, objects, png, _ in results:
        city = cities[index % len(cities)]
        name = f"{city}_{index:06d}_000019_leftImg8bit.png"
        path = root / "leftImg8bit" / split / city / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        rows = [_citypersons_row(o, 1000 * (index + 1) + k) for k, o in enumerate(objects)]
        entries.append((city, name, np.array(rows, np.float64).reshape(-1, 10)))
        records.append(_record(f"{city}/{name}", cfg, 0, objects, "citypersons"))
    order = sorted(range(len(entries)), key=lambda i: entries[i][1])
    records = [dict(records[i], image_id=k + 1) for k, i in enumerate(order)]
    write_citypersons_mat(root / "annotations" / f"anno_{split}.mat", split, entries)
    save_pedestrian_json(records, root / f"ground_truth_{split}.json")
    return records


def _write_caltech(root: Path, split: str, results, cfg: SyntheticConfig) -> List[Dict]:
    sets = CALTECH_SPLITS["test" if split == "test" else "train_1x"].sets
    records, videos = [], {}
    for index, objects, _, jpg in results:
        video_index, frame = divmod(index, cfg.frames_per_video)
        key = (sets[video_index % len(sets)], f"V{video_index // len(sets):03d}")
        videos.setdefault(key, []).append((jpg, objects))
        name = caltech_image_name(key[0], key[1], frame)
        records.append(_record(name, cfg, len(records) + 1, objects, "caltech"))
    for (set_name, video), frames in sorted(videos.items()):
        write_seq(root / set_name / f"{video}.seq", [f[0] for f in frames])
        write_vbb(
            root / "annotations" / set_name / f"{video}.vbb",
            [[VbbObject(KIND_LABELS[o.kind]["caltech"], o.box, o.vis_box if o.occluded else (0, 0, 0, 0),
                        int(o.occluded)) for o in f[1]] for f in frames],
        )
    # ground truth lists images in the order prepare_caltech extracts them (set, video, frame)
    records.sort(key=lambda r: r["file_name"])
    records = [dict(r, image_id=k + 1) for k, r in enumerate(records)]
    save_pedestrian_json(records, root / f"ground_truth_{split}.json")
    return records


def generate_synthetic(
    out: os.PathLike,
    num_train: int,
    num_val: int,
    cfg: Optional[SyntheticConfig] = None,
    formats: Sequence[str] = FORMATS,
    workers: Optional[int] = None,
    extract_caltech: bool = False,
) -> Dict[str, List[Dict]]:
    """Generate the data set tree at ``out`` (which must not exist; written atomically).

    Args:
        num_train: images of the train split; num_val: images of the val (CityPersons) /
            test (Caltech) split. Both formats hold the same scenes.
        formats: subset of ("citypersons", "caltech").
        workers: rendering processes (default: CPU count; 0 = in this process).
        extract_caltech: also run :func:`~hkd_d2.data.caltech.prepare_caltech` on the Caltech
            tree (every frame) into ``<out>/caltech/prepared/{train,test}.json`` + ``images/``.

    Returns:
        ground truth records keyed ``"<format>_<split>"`` (file names relative, see module doc).
    """
    cfg = cfg or SyntheticConfig()
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    workers = os.cpu_count() if workers is None else workers
    ground_truth = {}
    with atomic_output(out, is_dir=True) as tmp:
        pool = ProcessPoolExecutor(workers) if workers > 0 else None
        try:
            for split_id, count in enumerate((num_train, num_val)):
                tasks = [(cfg, split_id, i, tuple(formats)) for i in range(count)]
                mapper = pool.map(_render_task, tasks, chunksize=8) if pool else map(_render_task, tasks)
                results = []
                for done, result in enumerate(mapper, start=1):
                    results.append(result)
                    if done % 200 == 0 or done == count:
                        logger.info("synthetic split %d: rendered %d/%d images", split_id, done, count)
                for fmt in formats:
                    split = SPLITS[fmt][split_id]
                    write = _write_citypersons if fmt == "citypersons" else _write_caltech
                    ground_truth[f"{fmt}_{split}"] = write(tmp / fmt, split, results, cfg)
        finally:
            if pool:
                pool.shutdown()
        if extract_caltech and "caltech" in formats:
            for split, split_key in (("train", "train_1x"), ("test", "test")):
                prepare_caltech(tmp / "caltech", split_key, tmp / "caltech" / "prepared", step=1,
                                json_name=f"{split}.json")
        (tmp / "config.txt").write_text(repr(asdict(cfg)) + "\n")
    logger.info("Synthetic data written to %s", out)
    return ground_truth


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier on every person height")
    parser.add_argument("--height-median", type=float, default=SyntheticConfig.height_median,
                        help="median person height in px at 480 px image height")
    parser.add_argument("--format", choices=("citypersons", "caltech", "both"), default="both")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = SyntheticConfig(width=args.width, height=args.height, seed=args.seed, scale=args.scale,
                          height_median=args.height_median)
    formats = FORMATS if args.format == "both" else (args.format,)
    generate_synthetic(args.out, args.num_train, args.num_val, cfg, formats, args.workers)


if __name__ == "__main__":
    main()

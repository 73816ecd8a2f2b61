"""Scene layout of the synthetic data: where each object goes, its boxes, and how it is drawn.

:func:`render_scene` samples the object kinds of an image and asks the kind's *planner*
(:data:`PLANNERS`, one function per kind) for a :class:`Plan`: the annotated object (full and
visible box), the pixel extent it occupies (objects never overlap), and a drawing closure.
Planners run in sampling order and the drawing closures far to near, all from one generator.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from .drawing import (
    PERSON_ASPECT,
    draw_background,
    draw_clutter,
    draw_figure,
    draw_occluder,
    photometric,
    random_color,
)

__all__ = ["SyntheticConfig", "SceneObject", "Plan", "PLANNERS", "render_scene"]

Box = Tuple[int, int, int, int]  # x, y, w, h
Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1

REFERENCE_HEIGHT = 480  # image height at which the height distribution below is specified
FOOT_BELOW_HORIZON = (0.35, 0.6)  # foot line below the horizon, in person heights
HORIZON_RANGE = (0.35, 0.5)  # horizon height as a fraction of the image height
GROUP_SIZE = (3, 6)  # members of a group (uniform, exclusive top); each shifted by half a width
GROUP_JITTER = 12  # members' vertical jitter is up to h / GROUP_JITTER
CROWD_HEIGHT = 18.0  # px at 480: figure height of a far-away crowd (ignore region)
CROWD_MIN_HEIGHT = 6.0  # px: smallest crowd figure
CROWD_HEIGHT_FACTOR = (0.6, 1.2)
CROWD_SIZE = (4, 10)  # figures of a crowd (uniform, exclusive top)
RIDER_WHEEL_RADIUS = 0.2  # bicycle wheel radius / rider height
RIDER_WHEEL_OFFSET = 0.1  # wheel centres beyond the rider box / rider height
SEAT_TOP, SEAT_BOTTOM = 0.55, 0.62  # bench of a sitting person, fraction of its height
POSTER_MARGIN = 4  # a poster board extends w / POSTER_MARGIN beyond the figure
MIN_OCCLUDED_HEIGHT = 8  # px; smaller pedestrians are never occluded
BOTTOM_OCCLUSION_PROB = 0.7  # share of occluders that hide the legs (cars, fences) vs a side


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
    # Kinds that are detection targets in the CityPersons ground truth, one class each in this order
    # (the other kinds are ignore regions). ("pedestrian", "rider") makes the riders, a small share
    # of the people (kind_weights), a rare class of their own. Drawing does not depend on it.
    classes: Tuple[str, ...] = ("pedestrian",)


@dataclass
class SceneObject:
    """One annotated object: kind (key of KIND_LABELS), integer full and visible boxes (XYWH)."""

    kind: str
    box: Tuple[int, int, int, int]
    vis_box: Tuple[int, int, int, int]

    @property
    def occluded(self) -> bool:
        return self.vis_box != self.box




def _person_box(rng: np.random.Generator, cfg: SyntheticConfig, h: float, horizon: int) -> Optional[Tuple[int, int, int, int]]:
    H, W = cfg.height, cfg.width
    h = int(round(h))
    w = int(round(PERSON_ASPECT * h))
    if w < 1 or h + 1 >= H or w + 1 >= W:
        return None
    foot = int(round(min(H - 1, horizon + h * rng.uniform(*FOOT_BELOW_HORIZON))))
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
    if rng.random() < BOTTOM_OCCLUSION_PROB or w < 4:
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



def _extent(box: Tuple[int, int, int, int], extra: Optional[Tuple[int, int, int, int]] = None):
    x, y, w, h = box
    x0, y0, x1, y1 = x, y, x + w, y + h
    if extra is not None:
        x0, y0, x1, y1 = min(x0, extra[0]), min(y0, extra[1]), max(x1, extra[2] + 1), max(y1, extra[3] + 1)
    return x0, y0, x1, y1


@dataclass
class Plan:
    """Layout of one object: its annotation, the pixels it occupies, and how to draw it."""

    object: SceneObject
    extent: Rect
    draw: Callable[[np.ndarray, np.random.Generator], None]


Planner = Callable[[np.random.Generator, SyntheticConfig, float, int, float], Optional[Plan]]


def _plan_group(rng, cfg: SyntheticConfig, h: float, horizon: int, unit: float) -> Optional[Plan]:
    """People walking side by side, one "group" box around them."""
    box = _person_box(rng, cfg, h, horizon)
    n = int(rng.integers(*GROUP_SIZE))
    if box is None or box[0] + box[2] * (n + 1) // 2 >= cfg.width:
        return None
    x, y, w, hh = box
    members = [(x + i * w // 2, y + int(rng.integers(0, max(1, hh // GROUP_JITTER))), w, hh) for i in range(n)]
    gx1 = max(m[0] + m[2] for m in members)
    gy1 = max(m[1] + m[3] for m in members)
    group = (x, y, gx1 - x, gy1 - y)
    if gy1 >= cfg.height:
        return None

    def draw(img, r):
        for m in members:
            draw_figure(img, m, r)

    return Plan(SceneObject("group", group, group), _extent(group), draw)


def _plan_crowd(rng, cfg: SyntheticConfig, h: float, horizon: int, unit: float) -> Optional[Plan]:
    """A far-away crowd: many tiny figures, one ignore box around them (``h`` is not used)."""
    h = max(CROWD_MIN_HEIGHT, CROWD_HEIGHT * unit * rng.uniform(*CROWD_HEIGHT_FACTOR))
    box = _person_box(rng, cfg, h, horizon)
    if box is None:
        return None
    x, y, w, hh = box
    n = int(rng.integers(*CROWD_SIZE))
    region = (x, y, min(cfg.width - 1 - x, w * (n + 1) // 2), hh)

    def draw(img, r):
        for i in range(n):
            if x + i * (w // 2) + w <= x + region[2]:
                draw_figure(img, (x + i * (w // 2), y, w, hh), r)

    return Plan(SceneObject("ignore", region, region), _extent(region), draw)


def _plan_rider(rng, cfg: SyntheticConfig, h: float, horizon: int, unit: float) -> Optional[Plan]:
    """A cyclist: the person box; the bicycle only occupies space."""
    box = _person_box(rng, cfg, h, horizon)
    if box is None:
        return None
    x, y, w, hh = box
    r_wheel = max(1, int(RIDER_WHEEL_RADIUS * hh))
    offset = int(RIDER_WHEEL_OFFSET * hh)
    wheels = [(x - offset, y + hh - r_wheel), (x + w + offset, y + hh - r_wheel)]
    extra = (wheels[0][0] - r_wheel, y, wheels[1][0] + r_wheel, y + hh)
    if extra[0] < 0 or extra[2] >= cfg.width:
        return None

    def draw(img, r):
        frame_color = random_color(r, 0, 255)
        for c in wheels:
            cv2.circle(img, c, r_wheel, (20, 20, 20), max(1, r_wheel // 5))
        cv2.line(img, wheels[0], (x + w // 2, y + hh - r_wheel), frame_color, max(1, hh // 40))
        cv2.line(img, wheels[1], (x + w // 2, y + int(0.5 * hh)), frame_color, max(1, hh // 40))
        draw_figure(img, box, r, pose="ride")

    return Plan(SceneObject("rider", box, box), _extent(box, extra), draw)


def _plan_sitting(rng, cfg: SyntheticConfig, h: float, horizon: int, unit: float) -> Optional[Plan]:
    """A person sitting on a bench."""
    box = _person_box(rng, cfg, h, horizon)
    if box is None:
        return None
    x, y, w, hh = box

    def draw(img, r):
        seat = ((x - w // 3, y + int(SEAT_TOP * hh)), (x + w + w // 3, y + int(SEAT_BOTTOM * hh)))
        cv2.rectangle(img, *seat, random_color(r, 40, 160), -1)
        draw_figure(img, box, r, pose="sit")

    extra = (x - w // 3, y, x + w + w // 3, y + hh)
    return Plan(SceneObject("sitting", box, box), _extent(box, extra), draw)


def _plan_other(rng, cfg: SyntheticConfig, h: float, horizon: int, unit: float) -> Optional[Plan]:
    """A person on a poster / a mannequin: flat grey figure on a board."""
    box = _person_box(rng, cfg, h, horizon)
    if box is None:
        return None
    x, y, w, hh = box
    board = (x - w // POSTER_MARGIN, y - hh // 20, x + w + w // POSTER_MARGIN, y + hh)

    def draw(img, r):
        cv2.rectangle(img, board[:2], board[2:], random_color(r, 150, 255), -1)
        tone = int(r.integers(40, 200))
        flat = {k: (tone, tone, tone) for k in ("skin", "shirt", "pants", "hair", "shoes")}
        flat["stripes"] = None
        draw_figure(img, box, r, palette=flat)

    return Plan(SceneObject("other", box, box), _extent(box, board), draw)


def _plan_pedestrian(rng, cfg: SyntheticConfig, h: float, horizon: int, unit: float) -> Optional[Plan]:
    """A walking pedestrian, partly hidden by an occluder with probability ``cfg.occlusion_prob``."""
    box = _person_box(rng, cfg, h, horizon)
    if box is None:
        return None
    if rng.random() < cfg.occlusion_prob and box[3] >= MIN_OCCLUDED_HEIGHT:
        vis, rect, side = _occlusion(rng, cfg, box)

        def draw(img, r):
            draw_figure(img, box, r)
            draw_occluder(img, r, rect, side)

        return Plan(SceneObject("pedestrian", box, vis), _extent(box, rect), draw)
    return Plan(SceneObject("pedestrian", box, box), _extent(box), lambda img, r: draw_figure(img, box, r))


# object kind -> planner; the kinds of SyntheticConfig.kind_weights
PLANNERS: Dict[str, Planner] = {
    "pedestrian": _plan_pedestrian,
    "rider": _plan_rider,
    "sitting": _plan_sitting,
    "other": _plan_other,
    "group": _plan_group,
    "ignore": _plan_crowd,
}


def render_scene(cfg: SyntheticConfig, split_id: int, index: int) -> Tuple[np.ndarray, List[SceneObject]]:
    """Draw image ``index`` of split ``split_id``: BGR uint8 (H, W, 3) and its objects.

    Deterministic in (cfg.seed, split_id, index).
    """
    rng = np.random.default_rng([cfg.seed, split_id, index])
    H, W = cfg.height, cfg.width
    unit = H / REFERENCE_HEIGHT * cfg.scale
    img = np.empty((H, W, 3), np.uint8)
    horizon = int(H * rng.uniform(*HORIZON_RANGE))

    def sample_height() -> float:
        h = rng.lognormal(math.log(cfg.height_median), cfg.height_log_std)
        return float(np.clip(h, cfg.min_person_height, cfg.max_person_height)) * unit

    draw_background(img, rng, horizon)
    draw_clutter(img, rng, horizon, {"sample": sample_height, "clutter": (cfg.clutter_per_image[0], cfg.clutter_per_image[1] + 1)})

    kinds = list(cfg.kind_weights)
    weights = np.array([cfg.kind_weights[k] for k in kinds], float)
    plans, taken = [], []
    for _ in range(int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        plan = PLANNERS[kind](rng, cfg, sample_height(), horizon, unit)
        if plan is not None and not _overlaps(plan.extent, taken):
            taken.append(plan.extent)
            plans.append(plan)
    objects = []
    for plan in sorted(plans, key=lambda p: p.object.box[1] + p.object.box[3]):  # far to near
        plan.draw(img, rng)
        objects.append(plan.object)
    return photometric(img, rng), objects



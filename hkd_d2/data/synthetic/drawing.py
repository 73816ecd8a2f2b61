"""Drawing of the synthetic scenes with OpenCV: people, street background, clutter, occluders.

Every function draws in place on a BGR uint8 image with the given generator, so a scene is a
deterministic function of its seed. Sizes are relative to the figure / image height.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["PERSON_ASPECT", "random_color", "draw_figure", "draw_background", "draw_clutter", "draw_occluder", "photometric"]

PERSON_ASPECT = 0.41  # width / height of every person box (Caltech / CityPersons alignment)
NOISE_AMPLITUDE = 8  # +- grey levels of the per-image sensor noise
SKIN_TONES = ((60, 90, 140), (90, 130, 190), (120, 160, 220), (45, 65, 100), (150, 185, 230))
STRIPED_SHIRT_PROB = 0.35  # fraction of figures whose shirt has stripes
MIN_STRIPED_HEIGHT = 40  # px; smaller figures are drawn without stripes
CLUTTER_KINDS = 4  # pole, tree, bin, door (see draw_clutter)
CLUTTER_HEIGHT_FACTOR = (0.8, 2.5)  # clutter height relative to a sampled person height
LANE_MARKINGS = (2, 6)  # lane markings per image (uniform, exclusive top)
GAIN_RANGE = (0.7, 1.15)  # global brightness gain of the photometric step


def random_color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _shade(color: Sequence[int], factor: float) -> Tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in color)



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
            "shirt": random_color(rng),
            "pants": random_color(rng, 0, 140),
            "hair": random_color(rng, 0, 90),
            "shoes": random_color(rng, 0, 60),
            "stripes": random_color(rng) if rng.random() < STRIPED_SHIRT_PROB else None,
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
    if palette["stripes"] is not None and h >= MIN_STRIPED_HEIGHT:
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


def draw_background(img: np.ndarray, rng: np.random.Generator, horizon: int) -> None:
    H, W = img.shape[:2]
    sky = np.array(random_color(rng, 120, 255), np.float32)
    column = (sky * np.linspace(0.75, 1.0, horizon)[:, None, None]).astype(np.uint8)
    img[:horizon] = cv2.resize(column, (W, horizon), interpolation=cv2.INTER_NEAREST)
    img[horizon:] = random_color(rng, 60, 140)  # road / pavement
    x = int(rng.integers(-W // 10, 0))
    while x < W:  # building facades with windows along the horizon
        bw, bh = int(rng.integers(W // 10, W // 3)), int(rng.integers(horizon // 3, horizon + 1))
        color = random_color(rng, 40, 220)
        cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon + H // 40), color, -1)
        win, gap = max(2, bw // 10), max(3, bw // 6)
        win_color = _shade(color, rng.uniform(0.3, 0.6))
        for wy in range(horizon - bh + gap, horizon - gap, gap + win):
            for wx in range(x + gap // 2, x + bw - win, gap):
                cv2.rectangle(img, (wx, wy), (wx + win, wy + win), win_color, -1)
        x += bw
    curb = horizon + int(rng.integers(H // 20, H // 8))
    cv2.rectangle(img, (0, horizon + H // 40), (W, curb), random_color(rng, 90, 180), -1)  # sidewalk
    for _ in range(int(rng.integers(*LANE_MARKINGS))):
        lx, ly = int(rng.integers(0, W)), int(rng.integers(curb, H))
        cv2.line(img, (lx, ly), (lx + W // 12, ly), (230, 230, 230), max(1, H // 160))


def draw_clutter(img: np.ndarray, rng: np.random.Generator, horizon: int, person_height) -> None:
    """Hard negatives: vertical structures of pedestrian-like size and aspect."""
    H, W = img.shape[:2]
    for _ in range(int(rng.integers(*person_height["clutter"]))):
        h = person_height["sample"]() * rng.uniform(*CLUTTER_HEIGHT_FACTOR)
        foot = min(H - 1, horizon + h * rng.uniform(0.3, 0.9))
        x = rng.uniform(0, W)
        kind = rng.integers(CLUTTER_KINDS)
        color = random_color(rng, 20, 200)
        if kind == 0:  # pole with lamp or sign
            t = max(1, int(h * 0.04))
            cv2.rectangle(img, _pt(x, foot - h), _pt(x + t, foot), color, -1)
            if rng.random() < 0.5:
                cv2.circle(img, _pt(x + t / 2, foot - h), max(1, int(h * 0.06)), random_color(rng), -1)
            else:
                cv2.rectangle(img, _pt(x - h * 0.1, foot - h), _pt(x + h * 0.12, foot - h * 0.8), random_color(rng), -1)
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


def draw_occluder(img: np.ndarray, rng: np.random.Generator, rect: Tuple[int, int, int, int], side: str) -> None:
    x0, y0, x1, y1 = rect
    color = random_color(rng, 20, 230)
    cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
    if side == "bottom":  # car body / fence: add a stripe and wheels or posts
        cv2.line(img, (x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2), _shade(color, 0.6), max(1, (y1 - y0) // 8))
        for wx in (x0 + (x1 - x0) // 5, x1 - (x1 - x0) // 5):
            cv2.circle(img, (wx, y1), max(1, (y1 - y0) // 4), (25, 25, 25), -1)
    else:
        cv2.line(img, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), _shade(color, 0.7), max(1, (x1 - x0) // 6))



def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global gain, blocky sensor noise and a slight blur (uint8 OpenCV ops only, for speed)."""
    H, W = img.shape[:2]
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(*GAIN_RANGE))
    noise = rng.integers(0, 2 * NOISE_AMPLITUDE + 1, (H // 4 + 1, W // 4 + 1), dtype=np.uint8)
    noise = cv2.cvtColor(cv2.resize(noise, (W, H), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)
    img = cv2.subtract(cv2.add(img, noise), (NOISE_AMPLITUDE,) * 3 + (0,))
    return cv2.GaussianBlur(img, (3, 3), 0)


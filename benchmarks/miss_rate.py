"""Speed of the miss-rate core: 4 CityPersons setups on val_gt.json + dt_synthetic_seed1.json.

Times loading + evaluation (median of 3 runs) of hkd_d2's vectorised core and of a
straightforward per-image, per-detection loop written below (same semantics), checks that both
give the same numbers and prints the speed ratio.

Usage: python benchmarks/miss_rate.py [GT_JSON DT_JSON]
"""
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from hkd_d2.evaluation.miss_rate import PROTOCOLS, evaluate_miss_rate, load_detections, load_ground_truth

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "citypersons"
RUNS = 3


def fast(gt_path: Path, dt_path: Path) -> dict:
    gt = load_ground_truth(gt_path, "citypersons")
    return evaluate_miss_rate(gt, load_detections(dt_path, gt, "citypersons"), "citypersons")


def _overlap(d, g, ignored):
    iw = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    ih = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (d[2] * d[3] if ignored else d[2] * d[3] + g[2] * g[3] - inter)


def simple(gt_path: Path, dt_path: Path) -> dict:
    """Plain loops: per setup, per image, per detection, per ground truth."""
    protocol = PROTOCOLS["citypersons"]
    data = json.loads(gt_path.read_text())
    images = sorted(img["id"] for img in data["images"])
    gts, dts = defaultdict(list), defaultdict(list)
    for a in data["annotations"]:
        gts[a["image_id"]].append(a)
    for d in json.loads(dt_path.read_text()):
        dts[d["image_id"]].append(d)
    results = {}
    for name in protocol.default_setups:
        (h0, h1), (v0, v1) = protocol.setups[name].height_range, protocol.setups[name].vis_range
        scored, num_pos = [], 0  # (score, image rank, det rank, is_tp) of counted detections
        for rank, img in enumerate(images):
            gt = [(a["bbox"], bool(a["ignore"]) or not (h0 <= a["height"] <= h1 and v0 <= a["vis_ratio"] <= v1))
                  for a in gts[img]]
            gt.sort(key=lambda g: g[1])
            num_pos += sum(not ig for _, ig in gt)
            dt = sorted(dts[img], key=lambda d: -d["score"])[: protocol.max_dets]
            dt = [d for d in dt if h0 / 1.25 <= d["bbox"][3] < h1 * 1.25]
            matched = [False] * len(gt)
            for j, d in enumerate(dt):
                best, best_g, best_regular = 0.5, -1, False
                for k, (box, ig) in enumerate(gt):
                    if matched[k]:
                        continue
                    if best_regular and ig:
                        break
                    ov = _overlap(d["bbox"], box, ig)
                    if ov >= best:
                        best, best_g, best_regular = ov, k, not ig
                if best_g >= 0 and gt[best_g][1]:
                    continue  # on an ignore region
                if best_regular:
                    matched[best_g] = True
                scored.append((-d["score"], rank, j, best_regular))
        scored.sort(key=lambda s: s[:3])
        tp = fp = 0
        fppi, recall = [], []
        for *_, is_tp in scored:
            tp, fp = tp + is_tp, fp + (not is_tp)
            fppi.append(fp / len(images))
            recall.append(tp / num_pos)
        logs = []
        for ref in protocol.fppi_refs:
            r = 0.0
            for f, rc in zip(fppi, recall):
                if f > ref:
                    break
                r = rc
            logs.append(math.log(max(1e-10, 1 - r)))
        results[name] = math.exp(sum(logs) / len(logs))
    return results


def timed(fn, *args):
    times, result = [], None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    gt_path, dt_path = (Path(p) for p in sys.argv[1:3]) if len(sys.argv) > 2 else (
        REFERENCE / "val_gt.json", REFERENCE / "dt_synthetic_seed1.json")
    if not (gt_path.is_file() and dt_path.is_file()):
        sys.exit(f"{gt_path} or {dt_path} not found: pass GT_JSON DT_JSON (the default ones are the "
                 f"reference files beside the checkout, {REFERENCE}, which a plain clone does not have)")
    t_fast, r_fast = timed(fast, gt_path, dt_path)
    t_simple, r_simple = timed(simple, gt_path, dt_path)
    for name in r_fast:
        print(f"{name:<22} hkd_d2 {r_fast[name]:.6f}  simple loop {r_simple[name]:.6f}")
    assert np.allclose(list(r_fast.values()), list(r_simple.values()), rtol=0, atol=1e-12), "results differ"
    print(f"hkd_d2 core (load + 4 setups), median of {RUNS}: {t_fast:.4f} s")
    print(f"simple per-image loop,          median of {RUNS}: {t_simple:.4f} s")
    print(f"speed-up: {t_simple / t_fast:.1f}x")


if __name__ == "__main__":
    main()

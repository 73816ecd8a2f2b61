"""Speed of the synthetic data generator: images/s at a given size (default 640x480).

    python benchmarks/generator.py [--num 300] [--width 640] [--height 480] [--workers N]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--format", default="citypersons", choices=("citypersons", "caltech"))
    args = parser.parse_args()
    cfg = SyntheticConfig(width=args.width, height=args.height)
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        generate_synthetic(Path(tmp) / "out", args.num, 0, cfg, formats=(args.format,), workers=args.workers)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    print(f"{args.format} {args.width}x{args.height}: {args.num} images in {elapsed:.1f} s "
          f"= {args.num / elapsed:.1f} images/s (wall); {args.num / cpu:.1f} images per CPU-second")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the rendering workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()

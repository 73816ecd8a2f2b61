#!/usr/bin/env python
"""Extract a Caltech split's frames to images and write its generic pedestrian JSON.

    python datasets/prepare_caltech.py ROOT --split test --out-dir ROOT/prepared
    python datasets/prepare_caltech.py ROOT --split test --out-dir ROOT/prepared \\
        --new-annotations ROOT/anno_test_1xnew          # -> test_new.json

Writes ``OUT_DIR/images/setXX_VYYY_IZZZZZ.jpg`` and ``OUT_DIR/<split>[_new].json``.
"""
import argparse
import logging

from hkd_d2.data.caltech import CALTECH_SPLITS, prepare_caltech


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="Caltech root with setXX/VYYY.seq and annotations/setXX/VYYY.vbb")
    parser.add_argument("--split", choices=sorted(CALTECH_SPLITS), required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--new-annotations", default=None, help="folder of bbGt v3 files (Zhang et al. 2016)")
    parser.add_argument("--step", type=int, default=None, help="override the split's frame step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = prepare_caltech(args.root, args.split, args.out_dir, args.new_annotations, args.step)
    print(path)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Convert a CityPersons ``anno_*.mat`` to the generic pedestrian JSON (see docs/datasets.md).

    python datasets/prepare_citypersons.py ANNO_MAT --out OUT.json [--image-root leftImg8bit/val]

Image sizes come from the images under --image-root when present, else Cityscapes' 2048x1024.
"""
import argparse
import logging

from hkd_d2.data.citypersons import load_citypersons
from hkd_d2.data.pedestrian_json import save_pedestrian_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("anno_mat", help="anno_train.mat / anno_val.mat")
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--image-root", default=".", help="leftImg8bit/<split> (images as <city>/<im_name>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    records = load_citypersons(args.anno_mat, args.image_root, require_images=False)
    save_pedestrian_json(records, args.out, args.image_root)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Pre-train the R18 / R50 bottom-up ResNet on generated shape images (a stand-in for ImageNet weights).

    python tools/pretrain.py --depth 18      # -> output/pretrain/R-18.pkl, the pretrained configs' MODEL.WEIGHTS
    python tools/pretrain.py --depth 50      # -> output/pretrain/R-50.pkl
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.pretrain import main

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train or evaluate a pedestrian detector (teacher, student, or HKD-distilled student).

    python train_net.py --config-file configs/synthetic/hkd_R50_to_R18.yaml
    python train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file X.yaml --resume SOLVER.MAX_ITER 600
    python train_net.py --config-file X.yaml --num-gpus 8

The same command is installed as ``hkd-train`` (``hkd-eval`` = ``hkd-train --eval-only``).
"""
from hkd_d2.tools.train import main

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Learn a compact student backbone block by block under a compute budget (``hkd-compress``).

    python tools/compress.py --teacher-config configs/synthetic/teacher_R50_FPN_PyRoIAlign.yaml \
        --teacher-weights output/synthetic/teacher_R50_FPN_PyRoIAlign/model_final.pth \
        --max-gmacs 1.0 1.5 2.5 --out compress
"""
from hkd_d2.tools.compress import main

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Table 3 ablation: every config x seed, resumable, mean and spread per row.

    python tools/ablation.py --configs configs/synthetic/table3/*.yaml --seeds 3 --out ablation_output \
        [KEY VALUE ...]
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.ablation import main

if __name__ == "__main__":
    main()

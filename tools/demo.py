#!/usr/bin/env python
"""Demo: train teacher, student and HKD student on generated data; write a Table-1-style report.

    python tools/demo.py --out demo_output          # or: bash scripts/demo.sh
    python tools/demo.py --help                     # knobs: data size, image size, schedules, seeds
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.demo import main

if __name__ == "__main__":
    main()

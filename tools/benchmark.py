#!/usr/bin/env python
"""Speed and cost of teacher vs student: latency, parameters, GMACs, HKD training cost, evaluator.

    python tools/benchmark.py --out bench_output [--device cpu|cuda] [--repeats N]
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.benchmark import main

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Speed and cost of teacher vs student (PyTorch, TorchScript, ONNX Runtime fp32/int8): latency, parameters, GMACs, HKD training cost.

    python tools/benchmark.py --out bench_output [--device cpu|cuda] [--repeats N] [--no-training] [--no-exported]
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.benchmark import main

if __name__ == "__main__":
    main()

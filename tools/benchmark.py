#!/usr/bin/env python
"""Teacher vs deployed student on the benchmarks' recipes (PyTorch, TorchScript, ONNX Runtime fp32/int8):
latency with fixed work, per-stage profiles, deploy-time settings, HKD training cost.

    python tools/benchmark.py --out bench_output [--recipes ...] [--sizes 600x800 native] [--threads N]
        [--repeats N] [--profile] [--deploy-opts KEY VALUE ...]... [--device cpu|cuda]
    python tools/benchmark.py --out bench_output --training [--train-config citypersons/hkd_R50_to_R18.yaml]
        [--train-size HxW] [--profile]
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.benchmark import main

if __name__ == "__main__":
    main()

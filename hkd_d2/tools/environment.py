"""The numeric environment of a result: what trained weights depend on beyond configs and seeds.

The same config and seed give other weights, and so other miss rates, with another number of
math-library threads (reductions are split differently), another CPU (other vector
instructions), another torch build or another device. A paired verdict holds for the
environment it was measured in; the demo, the ablation runner and the benchmark write this
dict beside their numbers, and :mod:`hkd_d2.tools.pooled` compares and pools verdicts across
environments.
"""
import os
import platform
from typing import Dict, Mapping, Optional, Sequence, Union

import torch

__all__ = ["numeric_environment", "cpu_model", "describe_device", "format_environment"]

CPUINFO = "/proc/cpuinfo"
# /proc/cpuinfo fields naming the processor, by preference (x86: "model name"; some ARM kernels:
# "Model" or "Hardware").
CPUINFO_MODEL_FIELDS = ("model name", "Model", "Hardware")


def cpu_model(cpuinfo: str = CPUINFO) -> str:
    """The processor's name from ``cpuinfo`` (Linux), else what ``platform`` knows (maybe only the
    architecture, e.g. ``x86_64``)."""
    try:
        with open(cpuinfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        fields = {}
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for name in CPUINFO_MODEL_FIELDS:
        if fields.get(name):
            return fields[name]
    return platform.processor() or platform.machine() or "unknown"


def describe_device(device: str) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA ...)"``; a CUDA device on a machine without one is reported as
    the CPU the run falls back to."""
    if not device.startswith("cuda"):
        return device
    if not torch.cuda.is_available():
        return "cpu (cuda requested, no GPU)"
    index = int(device.partition(":")[2] or torch.cuda.current_device())
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def numeric_environment(devices: Union[str, Sequence[str]] = "cpu") -> Dict:
    """``{"torch", "torch_threads", "cpu", "cpu_cores", "device", "python"}`` of this process;
    ``devices``: the device(s) the numbers were computed on (``MODEL.DEVICE`` values)."""
    devices = [devices] if isinstance(devices, str) else list(devices)
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "device": " + ".join(describe_device(d) for d in devices),
        "python": platform.python_version(),
    }


def format_environment(environment: Optional[Mapping]) -> str:
    """One line: ``"torch 2.4.1, 1 torch thread, CPU Intel(R) Xeon(R) ... (2 cores), device cpu"``."""
    if not environment:
        return "not recorded"
    threads = environment.get("torch_threads")
    return (f"torch {environment.get('torch', '?')}, {threads} torch thread{'' if threads == 1 else 's'}, "
            f"CPU {environment.get('cpu', '?')} ({environment.get('cpu_cores', '?')} cores), "
            f"device {environment.get('device', '?')}")

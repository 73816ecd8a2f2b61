"""The console commands of hkd_d2 (``hkd-train``, ``hkd-eval``, ...) and ``python -m hkd_d2.tools CMD``.

Each command is the ``main(argv)`` of one module (:data:`COMMANDS`); ``python -m
hkd_d2.tools.<module>`` runs the same function.
"""
import importlib
import sys
from typing import Callable, Dict, Optional, Sequence

__all__ = ["COMMANDS", "run_command", "main"]

# command -> "module:function" whose function(argv) runs it.
COMMANDS: Dict[str, str] = {
    "train": "hkd_d2.tools.train:main",
    "eval": "hkd_d2.tools.train:eval_main",
    "export": "hkd_d2.tools.export_student:main",
    "detect": "hkd_d2.tools.detect:main",
    "video": "hkd_d2.tools.video:main",
    "demo": "hkd_d2.tools.demo:main",
    "ablation": "hkd_d2.tools.ablation:main",
    "benchmark": "hkd_d2.tools.benchmark:main",
    "miss-rate": "hkd_d2.evaluation.miss_rate.cli:main",
    "crowdhuman-eval": "hkd_d2.tools.crowdhuman_eval:main",
    "synthetic": "hkd_d2.data.synthetic:main",
    "compress": "hkd_d2.tools.compress:main",
    "compress-report": "hkd_d2.tools.compress_report:main",
    "pretrain": "hkd_d2.tools.pretrain:main",
    "pooled": "hkd_d2.tools.pooled:main",
    "curve": "hkd_d2.tools.curve:main",
}


def _function(command: str) -> Callable:
    module, name = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), name)


def run_command(command: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``command`` with ``argv``; its exit status (an int it returns, else 0)."""
    status = _function(command)(argv)
    return status if isinstance(status, int) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hkd_d2.tools COMMAND [ARGS]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m hkd_d2.tools {{{','.join(COMMANDS)}}} [ARGS] (each command's --help has more)",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return run_command(argv[0], argv[1:])


# Console-script targets (setup.cfg [options.entry_points]): hkd-<command> = hkd_d2.tools.cli:<command>.
def train() -> int:
    return run_command("train")


def evaluate() -> int:
    return run_command("eval")


def export() -> int:
    return run_command("export")


def detect() -> int:
    return run_command("detect")


def video() -> int:
    return run_command("video")


def demo() -> int:
    return run_command("demo")


def ablation() -> int:
    return run_command("ablation")


def benchmark() -> int:
    return run_command("benchmark")


def miss_rate() -> int:
    return run_command("miss-rate")


def crowdhuman_eval() -> int:
    return run_command("crowdhuman-eval")


def synthetic() -> int:
    return run_command("synthetic")


def compress() -> int:
    return run_command("compress")


def compress_report() -> int:
    return run_command("compress-report")


def pretrain() -> int:
    return run_command("pretrain")


def pooled() -> int:
    return run_command("pooled")


def curve() -> int:
    return run_command("curve")

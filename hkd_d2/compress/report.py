"""The budget-vs-cost report of ``hkd-compress``: one row per student (and per reference
detector: the teacher, the ResNet18 and MobileNetV2 students), a markdown table, a JSON file and
a plot (backbone GMACs against CPU latency, backbone parameters against the summed block loss)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..atomic import atomic_output
from ..tools.complexity import count_parameters
from ..tools.report import markdown_table
from ..tools.timing import time_call
from .budget import Budget
from .costs import backbone_cost

__all__ = ["measure", "report_markdown", "plot_report"]


def measure(name: str, model: nn.Module, inputs: List[Dict], size: Sequence[int], repeats: int,
            budget: Optional[Budget] = None, block_loss: Optional[float] = None) -> Dict:
    """One row: parameters (detector and backbone), backbone GMACs at ``size`` and the latency
    of the detector's inference on ``inputs`` (batch 1, median of ``repeats`` after one warm-up)."""
    model.eval()
    cost = backbone_cost(model, *size)
    with torch.no_grad():
        stats = time_call(lambda: model(inputs), repeats, warmup=1, device=model.device)
    return {"model": name, "budget": budget.label() if budget else None,
            "max_params_M": budget.max_params_m if budget else None, "max_gmacs": budget.max_gmacs if budget else None,
            "params_M": count_parameters(model) / 1e6, "backbone_params_M": cost.params / 1e6,
            "backbone_GMACs": cost.gmacs, "latency": stats.to_dict(), "block_loss": block_loss}


def _bound(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def report_markdown(rows: Sequence[Dict], size: Sequence[int], threads: int) -> str:
    """The table: budget, what each model costs, its latency and (students) its summed block loss."""
    table = [[r["model"], _bound(r["max_gmacs"]), _bound(r["max_params_M"]), f"{r['backbone_GMACs']:.3f}",
              f"{r['backbone_params_M']:.2f}", f"{r['params_M']:.2f}", f"{1e3 * r['latency']['median']:.1f}",
              "-" if r["block_loss"] is None else f"{r['block_loss']:.3f}"] for r in rows]
    headers = ["Model", "Max GMACs", "Max params (M)", "Backbone GMACs", "Backbone params (M)",
               "Detector params (M)", "CPU latency (ms)", "Summed block loss"]
    h, w = size
    return (markdown_table(headers, table) + f"\n\nBackbone (bottom-up + FPN) GMACs at {h}x{w} (fvcore, one "
            f"multiply-add = 1); latency: whole detector, batch 1, {h}x{w}, median, {threads} CPU thread(s). "
            "Budgets bound the backbone. Summed block loss: relative squared error of the chosen blocks on "
            "held-out images, summed over res2..res5.\n")


def plot_report(rows: Sequence[Dict], path: Path, title: str = "") -> Path:
    """Two panels: backbone GMACs vs CPU latency (every model, GMACs budgets dashed) and backbone
    parameters vs summed block loss (the compact students, parameter budgets dashed); PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.5))
    try:
        for r in rows:
            compact = r["budget"] is not None
            left.scatter(r["backbone_GMACs"], 1e3 * r["latency"]["median"], marker="o" if compact else "s",
                         color="tab:blue" if compact else "tab:gray")
            left.annotate(r["budget"] if compact else r["model"], (r["backbone_GMACs"], 1e3 * r["latency"]["median"]),
                          fontsize=7, xytext=(4, 4), textcoords="offset points")
            if compact:
                right.scatter(r["backbone_params_M"], r["block_loss"], color="tab:blue")
                right.annotate(r["budget"], (r["backbone_params_M"], r["block_loss"]), fontsize=7,
                               xytext=(4, 4), textcoords="offset points")
        for axis, key in ((left, "max_gmacs"), (right, "max_params_M")):
            for bound in sorted({r[key] for r in rows if r[key] is not None}):
                axis.axvline(bound, color="tab:red", linestyle=":", linewidth=1)
        left.set_xlabel("backbone GMACs")
        left.set_ylabel("CPU latency (ms)")
        right.set_xlabel("backbone parameters (M)")
        right.set_ylabel("summed block loss")
        for axis in (left, right):
            axis.grid(True, linestyle=":", linewidth=0.8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return Path(path)

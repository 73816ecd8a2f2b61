"""The budget-vs-cost report of ``hkd-compress``: one row per student (and per reference
detector: the teacher, the ResNet18 and MobileNetV2 students), a markdown table, a JSON file and
a plot (backbone GMACs against CPU latency, backbone parameters against the summed block loss);
after the students are trained, the budget-vs-MR table and plot (:func:`budget_vs_mr`)."""
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..tools.complexity import count_parameters
from ..tools.paired import format_paired
from ..tools.report import format_mean_spread, markdown_table, saved_figure
from ..tools.timing import time_call
from .budget import Budget
from .costs import backbone_cost

__all__ = ["measure", "report_markdown", "plot_report", "budget_vs_mr", "budget_vs_mr_markdown", "plot_budget_vs_mr"]


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
    with saved_figure(path, ncols=2, figsize=(11.0, 4.5), title=title) as (left, right):
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
    return Path(path)


def _table_row(table: Mapping, name: str) -> Mapping:
    for row in table["rows"]:
        if row["name"] == name:
            return row
    raise KeyError(f"no row {name!r} in the ablation table (rows: {[r['name'] for r in table['rows']]})")


def _budget_rows(table: Mapping, label: str) -> List[Mapping]:
    """The ablation rows whose config lies in the budget's folder (``.../<label>/<name>.yaml``)."""
    return [row for row in table["rows"] if Path(row["config"]).parent.name == label]


def _mr_entry(name: str, cost: Mapping, row: Optional[Mapping], mr: Optional[Mapping] = None) -> Dict:
    return {"model": name, "budget": cost["budget"], "max_gmacs": cost["max_gmacs"], "max_params_M": cost["max_params_M"],
            "backbone_GMACs": cost["backbone_GMACs"],
            "backbone_params_M": cost["backbone_params_M"], "params_M": cost["params_M"],
            "latency_median_s": cost["latency"]["median"], "ablation_row": row["name"] if row else None,
            "Reasonable": mr if mr is not None else row["Reasonable"], "paired": dict(row["paired"]) if row else {}}


def budget_vs_mr(report: Mapping, table: Mapping, references: Mapping[str, Tuple[str, str]],
                 teacher_mr: Optional[float] = None) -> List[Dict]:
    """Rows of the budget-vs-MR table, cheapest backbone first.

    Args:
        report: ``OUT/report.json`` of ``hkd-compress`` (costs and latencies of every model).
        table: an ablation table (``tools/ablation.py`` ``OUT/<table>.json``) holding the trained
            compact students (each row's config inside its budget's folder of ``OUT``; one table row
            per ablation row, named after it) and the reference rows, with its paired columns.
        references: display name -> (model of ``report`` whose costs it has, ablation row name),
            e.g. ``{"R18 + HKD": ("student_R18_FPN", "t3_7_pd_rd_ld")}``.
        teacher_mr: MR Reasonable of the teacher (it has no ablation row), shown when given.
    """
    costs = {r["model"]: r for r in report["rows"]}
    rows = []
    for cost in report["rows"]:
        if cost["budget"]:
            rows += [_mr_entry(row["name"], cost, row) for row in _budget_rows(table, cost["budget"])]
    for name, (model, row_name) in references.items():
        if model not in costs:
            raise KeyError(f"reference {name!r}: no model {model!r} in the compress report ({sorted(costs)})")
        rows.append(_mr_entry(name, costs[model], _table_row(table, row_name)))
    if teacher_mr is not None:
        rows.append(_mr_entry("teacher", costs["teacher"], None, {"mean": teacher_mr, "std": 0.0, "n": 1}))
    return sorted(rows, key=lambda r: r["backbone_GMACs"])


def budget_vs_mr_markdown(rows: Sequence[Mapping], references: Sequence[str]) -> str:
    """Budgets, costs, latency, MR Reasonable (mean ± std over seeds) and the paired gain against
    each ablation reference row (``references``: row names) of every model."""
    headers = ["Model", "Max GMACs", "Max params (M)", "Backbone GMACs", "Backbone params (M)", "CPU latency (ms)",
               "Seeds", "MR Reasonable", *[f"vs {ref}" for ref in references]]
    table = [[r["model"], _bound(r["max_gmacs"]), _bound(r["max_params_M"]), f"{r['backbone_GMACs']:.3f}",
              f"{r['backbone_params_M']:.2f}", f"{1e3 * r['latency_median_s']:.1f}", str(r["Reasonable"]["n"]),
              format_mean_spread(r["Reasonable"]),
              *[f"{format_paired(r['paired'][ref])}, {r['paired'][ref]['verdict']}" if ref in r["paired"] else "-"
                for ref in references]] for r in rows]
    return markdown_table(headers, table) + "\n"


def plot_budget_vs_mr(rows: Sequence[Mapping], path: Path, title: str = "") -> Path:
    """Backbone GMACs against MR Reasonable (mean, error bar = std over seeds), every model; PNG, atomic."""
    from matplotlib.ticker import ScalarFormatter

    with saved_figure(path, title=title) as axis:
        for index, r in enumerate(rows):
            compact = r["budget"] is not None
            mr = r["Reasonable"]
            axis.errorbar(r["backbone_GMACs"], mr["mean"], yerr=mr["std"], fmt="o" if compact else "s",
                          color="tab:blue" if compact else "tab:gray", capsize=3)
            # Alternate label sides: models of one cost (a student alone and distilled) sit together.
            axis.annotate(r["model"], (r["backbone_GMACs"], mr["mean"]), fontsize=7,
                          xytext=(4, 4 if index % 2 == 0 else -10), textcoords="offset points")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(ScalarFormatter())
        axis.set_xlabel("backbone GMACs (log)")
        axis.set_ylabel("MR Reasonable (%, lower is better)")
        axis.grid(True, linestyle=":", linewidth=0.8)
    return Path(path)

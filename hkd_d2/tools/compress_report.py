"""``hkd-compress-report``: the budget-vs-MR table and plot of an ``hkd-compress`` folder, once its
students are trained and evaluated (``tools/ablation.py`` on the written configs).

    hkd-compress-report compress_out ablation_out/compress.json \\
        --reference "R18 alone=student_R18_FPN:t3_1_baseline" "R18 + HKD=student_R18_FPN:t3_7_pd_rd_ld" \\
        --teacher-mr 17.97

Writes ``OUT/budget_vs_mr.{md,json,png}``: per model (each budget's student, the references, the
teacher) backbone GMACs and parameters, CPU latency (from the compress report), MR Reasonable over
the ablation's seeds and the ablation table's paired gains against its reference rows.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..compress.report import budget_vs_mr, budget_vs_mr_markdown, plot_budget_vs_mr
from .report import write_json, write_text

__all__ = ["parse_reference", "parse_args", "main"]


def parse_reference(text: str) -> Tuple[str, Tuple[str, str]]:
    """``"NAME=MODEL:ROW"`` -> (NAME, (MODEL, ROW)): display name, compress-report model, ablation row."""
    name, sep, rest = text.partition("=")
    model, sep2, row = rest.partition(":")
    if not (sep and sep2 and name and model and row):
        raise argparse.ArgumentTypeError(f"reference {text!r} is not NAME=MODEL:ROW (e.g. 'R18 alone=student_R18_FPN:t3_1')")
    return name, (model, row)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="folder written by hkd-compress (its report.json)")
    p.add_argument("table", help="ablation table JSON with the trained students (tools/ablation.py OUT/<table>.json)")
    p.add_argument("--reference", nargs="*", type=parse_reference, default=[], metavar="NAME=MODEL:ROW",
                   help="reference rows: display name = compress-report model (costs) : ablation row (MR)")
    p.add_argument("--teacher-mr", type=float, default=None, help="MR Reasonable of the teacher, shown when given")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    """Write ``OUT/budget_vs_mr.{md,json,png}``; return the rows."""
    args = parse_args(argv)
    out = Path(args.out)
    report_path, table_path = out / "report.json", Path(args.table)
    for path, what in ((report_path, "hkd-compress report"), (table_path, "ablation table")):
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
    table = json.loads(table_path.read_text())
    rows = budget_vs_mr(json.loads(report_path.read_text()), table, dict(args.reference), args.teacher_mr)
    if not any(r["budget"] for r in rows):
        raise ValueError(f"no row of {table_path} trains a student of {out} (its configs must lie in {out}/<budget>/)")
    write_json(out / "budget_vs_mr.json", {"table": str(table_path), "rows": rows})
    write_text(out / "budget_vs_mr.md", "# Budget vs miss rate\n\n" + budget_vs_mr_markdown(rows, table["references"]))
    plot_budget_vs_mr(rows, out / "budget_vs_mr.png", "hkd-compress: backbone cost vs MR Reasonable")
    return rows


if __name__ == "__main__":
    main()

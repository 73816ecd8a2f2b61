"""Paired verdicts of several numeric environments, each on its own and pooled (``hkd-pooled``).

    python -m hkd_d2.tools.pooled machineA/report.json machineB/report.json [--out pooled]
    python -m hkd_d2.tools.pooled a/table3.json b/table3.json --pair t3_7_pd_rd_ld:t3_1_baseline

Each input file holds the runs of one numeric environment (torch threads, CPU, torch version,
device: :mod:`hkd_d2.tools.environment`): a demo ``report.json`` or an ablation table
(``OUT/<table>.json`` of :mod:`hkd_d2.tools.ablation`). One paired comparison is read from each:

* demo report: the distilled student against the best student alone *of that report*
  (``paired.vs_best``), or against the student alone of config ``--reference``;
* ablation table: rows ``--pair CANDIDATE:REFERENCE`` (default: the table's only ``--compare`` pair).

Method. Per environment, the paired gain over its seeds (``MR(reference) - MR(candidate)`` on
Reasonable, positive = the candidate is better) by :func:`hkd_d2.tools.paired.paired_gain`: mean,
95% Student-t interval, wins/losses, verdict, plus the fraction of seeds won. Pooled: every
(environment, seed) pair is one observation; the same :func:`paired_gain` over all of them gives
the mean and a t interval on ``n_pairs - 1`` degrees of freedom. The pooled interval treats the
pairs as exchangeable and ignores that pairs of one environment may be correlated, so it says
whether the gain holds on average over these environments; the acceptance bar asks for each
environment on its own: the candidate wins on at least ``--win-fraction`` (80%) of the seeds
AND the interval lies above 0 (verdict "better") in EVERY environment.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .ablation import mr_by_seed, parse_comparisons
from .demo_report import STUDENT_PREFIX, student_kind
from .environment import format_environment
from .paired import DEFAULT_CONFIDENCE, format_paired, paired_gain
from .report import markdown_table, write_json, write_text

__all__ = ["DEFAULT_WIN_FRACTION", "load_comparison", "environment_verdict", "pool_environments", "pooled_report",
           "main"]

# Acceptance bar: fraction of seeds the candidate must win in each environment (with the interval above 0).
DEFAULT_WIN_FRACTION = 0.8


def _demo_comparison(data: Mapping, reference: Optional[str]) -> Tuple[str, str, Mapping]:
    paired = data["paired"]
    if reference is None:
        return "hkd", paired["best_student"], paired["vs_best"]
    kind = student_kind(Path(reference).stem)
    if kind not in paired["vs"]:
        raise ValueError(f"--reference {reference}: no such student alone; the report has "
                         f"{sorted(k[len(STUDENT_PREFIX):] for k in paired['vs'])}")
    return "hkd", kind, paired["vs"][kind]


def _ablation_comparison(data: Mapping, pair: Optional[str]) -> Tuple[str, str]:
    if pair is not None:
        return parse_comparisons([pair])[0]
    given = data.get("comparisons") or []
    if len(given) != 1:
        raise ValueError(f"an ablation table needs --pair CANDIDATE:REFERENCE (it has {len(given)} --compare pairs; "
                         f"rows: {[r['name'] for r in data['rows']]})")
    return given[0]["candidate"], given[0]["reference"]


def _pairs(data: Mapping, pair: Optional[str], reference: Optional[str]) -> Tuple[str, str, Dict, Dict]:
    """(candidate, reference, {seed: MR of the reference}, {seed: MR of the candidate}) of a demo
    report or an ablation table."""
    if "paired" in data and "vs_best" in data["paired"]:
        if pair is not None:
            raise ValueError("a demo report compares the distilled student with a student alone: "
                             "choose that one with --reference, not --pair")
        candidate, ref, gain = _demo_comparison(data, reference)
        return (candidate, ref, {p["seed"]: p["reference"] for p in gain["per_seed"]},
                {p["seed"]: p["candidate"] for p in gain["per_seed"]})
    if "runs" in data and "rows" in data:
        if len(data.get("environments") or []) > 1:
            raise ValueError(f"its runs were made in {len(data['environments'])} numeric environments; "
                             "give one file per environment")
        if reference is not None:
            raise ValueError("--reference applies to demo reports; name an ablation table's rows with --pair")
        candidate, ref = _ablation_comparison(data, pair)
        reference_mr, candidate_mr = mr_by_seed(data["runs"], ref), mr_by_seed(data["runs"], candidate)
        if not reference_mr or not candidate_mr:
            raise ValueError(f"no runs of {ref if not reference_mr else candidate} "
                             f"(rows: {[r['name'] for r in data['rows']]})")
        return candidate, ref, reference_mr, candidate_mr
    raise ValueError("neither a demo report.json nor an ablation table json")


def load_comparison(path: str, pair: Optional[str] = None, reference: Optional[str] = None) -> Dict:
    """The paired comparison of one environment's file: ``{"source", "environment", "candidate",
    "reference", "reference_mr": {seed: MR}, "candidate_mr": {seed: MR}}``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``path`` when it is absent, not JSON,
    neither a demo report nor an ablation table, names rows it does not have, or mixes environments.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"Result file not found: {path}")
    try:
        data = json.loads(Path(path).read_text())
        candidate, ref, reference_mr, candidate_mr = _pairs(data, pair, reference)
    except KeyError as e:
        raise ValueError(f"{path}: no entry {e} (a file of another version or tool?)") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return {"source": str(path), "environment": data.get("environment"), "candidate": candidate, "reference": ref,
            "reference_mr": reference_mr, "candidate_mr": candidate_mr}


def environment_verdict(comparison: Mapping, win_fraction: float = DEFAULT_WIN_FRACTION,
                        confidence: float = DEFAULT_CONFIDENCE) -> Dict:
    """:func:`paired_gain` of one environment plus ``"won_fraction"`` and ``"meets_bar"``."""
    gain = paired_gain(comparison["reference_mr"], comparison["candidate_mr"], confidence)
    won = gain["wins"] / gain["n"] if gain["n"] else 0.0
    return {**gain, "won_fraction": won, "meets_bar": won >= win_fraction and gain["verdict"] == "better"}


def pool_environments(comparisons: Sequence[Mapping], win_fraction: float = DEFAULT_WIN_FRACTION,
                      confidence: float = DEFAULT_CONFIDENCE) -> Dict:
    """Per-environment verdicts and the pooled gain over every (environment, seed) pair.

    Returns ``{"environments": [{source, environment, candidate, reference, **environment_verdict}],
    "pooled": paired_gain + "won_fraction", "bar_met", "win_fraction", "shared_environments"}``;
    ``shared_environments`` lists the sources whose recorded environments are equal (not independent).
    """
    if not comparisons:
        raise ValueError("No result files to pool")
    rows = [{k: c[k] for k in ("source", "environment", "candidate", "reference")}
            | environment_verdict(c, win_fraction, confidence) for c in comparisons]
    reference = {(i, s): v for i, c in enumerate(comparisons) for s, v in c["reference_mr"].items()}
    candidate = {(i, s): v for i, c in enumerate(comparisons) for s, v in c["candidate_mr"].items()}
    pooled = paired_gain(reference, candidate, confidence)
    pooled["won_fraction"] = pooled["wins"] / pooled["n"] if pooled["n"] else 0.0
    groups: List[Tuple[Mapping, List[str]]] = []
    for c in comparisons:
        if c["environment"]:
            group = next((g for g in groups if g[0] == c["environment"]), None)
            if group is None:
                groups.append((c["environment"], [c["source"]]))
            else:
                group[1].append(c["source"])
    return {"environments": rows, "pooled": pooled, "bar_met": all(r["meets_bar"] for r in rows),
            "win_fraction": win_fraction, "shared_environments": [g[1] for g in groups if len(g[1]) > 1]}


def pooled_report(result: Mapping) -> str:
    """Markdown: one row per environment and the pooled row, the acceptance bar, the method."""
    rows = [[i + 1, r["source"], format_environment(r["environment"]), f"{r['candidate']} vs {r['reference']}",
             r["n"], format_paired(r), f"{100 * r['won_fraction']:.0f}%", r["verdict"], "yes" if r["meets_bar"] else "no"]
            for i, r in enumerate(result["environments"])]
    p = result["pooled"]
    rows.append(["all", "pooled", f"{len(result['environments'])} environments", "", p["n"], format_paired(p),
                 f"{100 * p['won_fraction']:.0f}%", p["verdict"], "-"])
    table = markdown_table(["#", "File", "Numeric environment", "Comparison", "Seeds", "Gain [95% t interval] W/L",
                            "Seeds won", "Verdict", "Bar met"], rows)
    failing = [str(i + 1) for i, r in enumerate(result["environments"]) if not r["meets_bar"]]
    bar = (f"Acceptance bar (the candidate wins on >= {100 * result['win_fraction']:.0f}% of the seeds with the 95% "
           f"interval above 0, in EACH environment): **{'met' if result['bar_met'] else 'not met'}**"
           + (f" (failing: {', '.join(failing)})." if failing else "."))
    lines = [table, "", bar, "",
             "Gain: MR(reference) - MR(candidate) on Reasonable, points, paired by seed (positive = the candidate is "
             "better). Pooled: every (environment, seed) pair is one observation, t interval on pairs - 1 degrees "
             "of freedom (it ignores that pairs of one environment may be correlated)."]
    for sources in result["shared_environments"]:
        lines += ["", f"Note: {', '.join(sources)} recorded the same numeric environment (not independent environments)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="demo report.json or ablation table json files, one per environment")
    p.add_argument("--pair", default=None, metavar="CANDIDATE:REFERENCE",
                   help="rows compared in ablation tables (default: each table's only --compare pair)")
    p.add_argument("--reference", default=None, metavar="CONFIG",
                   help="student-alone config of demo reports to compare with (default: each report's best)")
    p.add_argument("--win-fraction", type=float, default=DEFAULT_WIN_FRACTION,
                   help="fraction of seeds to win in each environment (acceptance bar)")
    p.add_argument("--out", default=None, help="also write OUT/pooled.json and OUT/pooled.md")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if not 0 < args.win_fraction <= 1:
        raise ValueError(f"--win-fraction must be in (0, 1], got {args.win_fraction}")
    comparisons: List[Dict] = [load_comparison(f, args.pair, args.reference) for f in args.files]
    result = pool_environments(comparisons, args.win_fraction)
    text = pooled_report(result)
    if args.out:
        write_json(Path(args.out) / "pooled.json", result)
        write_text(Path(args.out) / "pooled.md", text)
    print(text)
    return result


if __name__ == "__main__":
    main()

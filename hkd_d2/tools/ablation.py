"""Ablation runner: every config x seed, resumable, a table of mean and spread per config.

A run is finished when its ``result.json`` exists (written atomically after its evaluation), so
an interrupted ablation continues where it stopped. Configs whose meta-architecture distills
from a teacher get ``MODEL.TEACHER.WEIGHTS``: each teacher config they name
(``MODEL.TEACHER.CONFIG_FILE``; Table 3 uses two, with and without PyRoIAlign) is trained once
into ``OUT/teachers/<teacher config name>`` with the same overrides, unless
``--teacher-weights`` gives its weights. Runs and teachers are keyed by config name and seed, so
several tables (``--table``) can share one OUT; a finished run made with other overrides is
refused (another OUT is needed), never silently reused.

Every row is compared seed by seed with each ``--reference`` row (default: the first config) and
``--compare CANDIDATE:REFERENCE`` adds named pairs (e.g. the effect of one term): the paired gain in
MR Reasonable with its 95% t interval and wins/losses (:mod:`hkd_d2.tools.paired`), in
``OUT/<table>.json`` (``rows[i]["paired"]``, ``comparisons``) and ``OUT/<table>.md``.

Each run's ``result.json`` records the numeric environment it was trained in (torch threads, CPU,
cores, torch version, device: :mod:`hkd_d2.tools.environment`); the table names the environment(s)
of its runs (``environment``, ``environments``), so a verdict is read with the environment it holds
for (:mod:`hkd_d2.tools.pooled` compares and pools tables of several environments).
"""
import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from detectron2.utils.logger import setup_logger

from ..modeling.teacher import resolve_path
from .environment import format_environment, numeric_environment
from .progress import format_duration
from .paired import format_paired, paired_gain
from .report import format_mean_spread, markdown_table, mean_and_spread, write_json, write_text
from .runs import build_run_config, evaluate, teacher_config, train

__all__ = ["AblationRun", "plan_runs", "run_ablation", "check_overrides", "summarize_ablation", "ablation_table",
           "parse_teacher_weights", "mr_by_seed", "paired_comparisons", "comparison_table", "parse_comparisons",
           "run_device", "run_environments", "environment_note", "only_finished_rows", "main"]

logger = logging.getLogger("hkd_d2.ablation")

RESULT_FILE = "result.json"
TEACHERS_DIR = "teachers"
# Key of --teacher-weights given without a teacher config name: used for every teacher.
ANY_TEACHER = ""
# Setups reported in the table (CityPersons protocol names) -> column titles.
TABLE_SETUPS = {"Reasonable": "MR Reasonable (%)", "Reasonable_small": "MR Small (%)"}
# Setup of the paired comparisons between rows.
PAIRED_SETUP = "Reasonable"
# (config_file, opts, output_dir) -> {setup: MR %}
RunFn = Callable[[str, List[str], str], Dict[str, float]]
# (config_file, opts, output_dir) -> path of the trained teacher's weights
TeacherFn = Callable[[str, List[str], str], str]


@dataclass(frozen=True)
class AblationRun:
    """One training run of the ablation: a config and a seed, with its own output folder."""

    config_file: str
    seed: int
    output_dir: Path

    @property
    def name(self) -> str:
        return Path(self.config_file).stem

    @property
    def result_path(self) -> Path:
        return self.output_dir / RESULT_FILE

    def finished(self) -> bool:
        return self.result_path.is_file()


def plan_runs(config_files: Sequence[str], num_seeds: int, out: Path, first_seed: int = 0) -> List[AblationRun]:
    """Runs in table order (config by config, seeds first_seed..first_seed+num_seeds-1), each in
    ``out/<config>/seed<k>``."""
    if num_seeds < 1 or first_seed < 0:
        raise ValueError(f"--seeds must be >= 1 and --first-seed >= 0, got {num_seeds} and {first_seed}")
    stems = [Path(c).stem for c in config_files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"Config file names must differ (they name the output folders): {duplicates}")
    return [AblationRun(c, seed, out / Path(c).stem / f"seed{seed}") for c in config_files
            for seed in range(first_seed, first_seed + num_seeds)]


def train_and_evaluate(config_file: str, opts: List[str], output_dir: str) -> Dict[str, float]:
    """The real run function: train ``config_file`` + ``opts`` and evaluate on its DATASETS.TEST."""
    cfg = build_run_config(config_file, opts, output_dir)
    model = train(cfg)
    return evaluate(cfg, model, str(Path(output_dir) / "eval"))


def train_teacher(config_file: str, opts: List[str], output_dir: str) -> str:
    """The real teacher function: train once; reuse ``model_final.pth`` when it exists."""
    final = Path(output_dir) / "model_final.pth"
    if final.is_file():
        logger.info(f"Teacher already trained: {final}")
    else:
        train(build_run_config(config_file, opts, output_dir))
    return str(final)


def run_ablation(
    runs: Sequence[AblationRun],
    opts: Sequence[str],
    out: Path,
    run_fn: RunFn = train_and_evaluate,
    teacher_fn: TeacherFn = train_teacher,
    teacher_weights: Optional[Dict[str, str]] = None,
    teacher_opts: Sequence[str] = (),
    teacher_of: Callable[[str], Optional[str]] = teacher_config,
) -> List[Dict]:
    """Run every unfinished run (in order) and return all results (finished ones read back).

    Each result is ``{"config", "name", "seed", "overrides", "mr": {setup: MR %}, "environment"}``
    (runs finished before environments were recorded have none). ``teacher_weights`` maps
    a teacher config's name (file stem; ``""`` = any) to weights; another teacher is trained
    (``teacher_fn``) once, when the first unfinished run that needs it comes.
    """
    teacher_weights = dict(teacher_weights or {})
    for run in runs:
        if run.finished():
            check_overrides(run, opts)
    todo = [r for r in runs if not r.finished()]
    logger.info(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to do")
    start, done = time.monotonic(), 0
    for index, run in enumerate(runs, start=1):
        if run.finished():
            continue
        run_opts = list(opts) + ["SEED", str(run.seed)]
        teacher_cfg = teacher_of(run.config_file)
        if teacher_cfg is not None:
            stem = Path(teacher_cfg).stem
            if stem not in teacher_weights:
                teacher_weights[stem] = teacher_weights.get(ANY_TEACHER) or teacher_fn(
                    teacher_cfg, list(opts) + list(teacher_opts), str(out / TEACHERS_DIR / stem))
            run_opts += ["MODEL.TEACHER.CONFIG_FILE", teacher_cfg, "MODEL.TEACHER.WEIGHTS", teacher_weights[stem]]
        eta = (time.monotonic() - start) / done * (len(todo) - done) if done else float("nan")
        logger.info(f"==== run {index}/{len(runs)}: {run.name} seed {run.seed} | {done}/{len(todo)} done by this "
                    f"process | elapsed {format_duration(time.monotonic() - start)}"
                    + (f" | ETA {format_duration(eta)}" if done else "") + " ====")
        mr = run_fn(run.config_file, run_opts, str(run.output_dir))
        write_json(run.result_path, {"config": run.config_file, "name": run.name, "seed": run.seed,
                                     "overrides": list(opts), "mr": mr,
                                     "environment": numeric_environment(run_device(run_opts))})
        done += 1
    return [json.loads(r.result_path.read_text()) for r in runs]


def check_overrides(run: AblationRun, opts: Sequence[str]) -> None:
    """Refuse a finished run whose recorded overrides differ from ``opts`` (it would be stale)."""
    recorded = json.loads(run.result_path.read_text()).get("overrides")
    if recorded is not None and recorded != list(opts):
        raise ValueError(f"{run.result_path} was made with overrides {recorded}, this call has {list(opts)}; "
                         "use another --out (finished runs are reused by config name and seed)")


def summarize_ablation(results: Sequence[Dict]) -> List[Dict]:
    """One row per config (first-seen order): {"name", "config", "seeds", setup: mean_and_spread}."""
    rows: Dict[str, Dict] = {}
    for result in results:
        row = rows.setdefault(result["name"], {"name": result["name"], "config": result["config"], "seeds": [],
                                                "values": {s: [] for s in TABLE_SETUPS}})
        row["seeds"].append(result["seed"])
        for setup in TABLE_SETUPS:
            row["values"][setup].append(result["mr"].get(setup, float("nan")))
    return [{"name": r["name"], "config": r["config"], "seeds": r["seeds"],
             **{s: mean_and_spread(v) for s, v in r["values"].items()}} for r in rows.values()]


def run_device(opts: Sequence[str]) -> str:
    """The device of a run with overrides ``opts``: their last ``MODEL.DEVICE``, else Detectron2's
    default as the shipped configs (which set none) resolve it: cuda when a GPU exists, else cpu."""
    pairs = dict(zip(opts[::2], opts[1::2]))
    return pairs.get("MODEL.DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def run_environments(results: Sequence[Dict]) -> List[Dict]:
    """The distinct numeric environments of ``results``, first-seen order:
    ``[{"environment": dict or None (not recorded), "runs": ["<name> seed <k>", ...]}]``."""
    groups: List[Dict] = []
    for result in results:
        environment = result.get("environment")
        group = next((g for g in groups if g["environment"] == environment), None)
        if group is None:
            group = {"environment": environment, "runs": []}
            groups.append(group)
        group["runs"].append(f"{result['name']} seed {result['seed']}")
    return groups


def environment_note(environments: Sequence[Dict]) -> str:
    """Markdown line naming the numeric environment of the runs (each, when they differ)."""
    if not environments:
        return "No finished runs, so no numeric environment."
    if len(environments) == 1:
        return f"Numeric environment of the runs: {format_environment(environments[0]['environment'])}."
    return (f"The runs were made in {len(environments)} numeric environments, so their pairs mix them: "
            + "; ".join(f"{format_environment(g['environment'])} ({', '.join(g['runs'])})" for g in environments) + ".")


def mr_by_seed(results: Sequence[Dict], name: str, setup: str = PAIRED_SETUP) -> Dict[int, float]:
    """{seed: MR of ``setup``} of the runs of config ``name`` in ``results``."""
    return {r["seed"]: r["mr"][setup] for r in results if r["name"] == name and r["mr"].get(setup) is not None}


def paired_comparisons(results: Sequence[Dict], rows: Sequence[Dict], references: Sequence[str],
                       comparisons: Sequence[Tuple[str, str]] = ()) -> List[Dict]:
    """Add ``row["paired"] = {reference: paired_gain}`` to every row (in place) and return the
    explicit ``comparisons`` as ``[{"candidate", "reference", **paired_gain}]`` (MR ``PAIRED_SETUP``)."""
    names = {r["name"] for r in rows}
    unknown = sorted({n for n in list(references) + [n for pair in comparisons for n in pair]} - names)
    if unknown:
        raise ValueError(f"--reference/--compare name rows that are not in the table: {unknown} (rows: {sorted(names)})")
    for row in rows:
        row["paired"] = {ref: paired_gain(mr_by_seed(results, ref), mr_by_seed(results, row["name"]))
                         for ref in references if ref != row["name"]}
    return [{"candidate": cand, "reference": ref,
             **paired_gain(mr_by_seed(results, ref), mr_by_seed(results, cand))} for cand, ref in comparisons]


def only_finished_rows(references: Sequence[str], pairs: Sequence[Tuple[str, str]],
                       finished: Set[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The references and comparison pairs whose rows have finished runs (a table of an ablation
    still under way); the others are left out with a warning."""
    kept_refs = [r for r in references if r in finished]
    kept_pairs = [p for p in pairs if set(p) <= finished]
    left_out = sorted({n for n in list(references) + [n for p in pairs for n in p]} - finished)
    if left_out:
        logger.warning(f"--report-only: no finished run of {', '.join(left_out)}: its comparisons are left out")
    return kept_refs, kept_pairs


def ablation_table(rows: Sequence[Dict], references: Sequence[str] = ()) -> str:
    """Markdown table: config, seeds, MR mean ± std [min-max] per reported setup, then the paired
    gain over each reference row (mean [95% interval] wins/losses)."""
    def cell(stats: Dict[str, float]) -> str:
        text = format_mean_spread(stats)
        return text + (f" [{stats['min']:.2f}-{stats['max']:.2f}]" if stats["n"] > 1 else "")

    headers = ["Config", "Seeds"] + list(TABLE_SETUPS.values()) + [f"Gain vs {ref}" for ref in references]
    return markdown_table(headers, [
        [r["name"], len(r["seeds"])] + [cell(r[s]) for s in TABLE_SETUPS]
        + [format_paired(r["paired"][ref]) if ref in r.get("paired", {}) else "-" for ref in references]
        for r in rows])


def comparison_table(comparisons: Sequence[Dict]) -> str:
    """Markdown table of explicit paired comparisons, with the verdict."""
    return markdown_table(["Candidate", "Reference", "Seeds", "Gain in MR Reasonable [95% t interval]", "Verdict"],
                          [[c["candidate"], c["reference"], c["n"], format_paired(c), c["verdict"]] for c in comparisons])


def config_name(text: str) -> str:
    """The table name of a config given by name or path: its file name without ``.yaml``
    (``"pcl_ema_0.99"`` stays whole, as ``"a/pcl_ema_0.99.yaml"`` names it)."""
    name = Path(text).name
    return Path(name).stem if Path(name).suffix in (".yaml", ".yml") else name


def parse_comparisons(items: Sequence[str]) -> List[Tuple[str, str]]:
    """``["t3_3_ld:t3_1_baseline"]`` -> ``[("t3_3_ld", "t3_1_baseline")]`` (config names, no suffix)."""
    pairs = []
    for item in items:
        cand, sep, ref = item.partition(":")
        if not sep or not cand or not ref:
            raise ValueError(f"--compare expects CANDIDATE:REFERENCE (config names), got '{item}'")
        pairs.append((config_name(cand), config_name(ref)))
    return pairs


def parse_teacher_weights(items: Sequence[str]) -> Dict[str, str]:
    """``["teacher_R50_FPN=a.pth", "b.pth"]`` -> ``{"teacher_R50_FPN": abs a.pth, "": abs b.pth}``
    (files checked)."""
    weights = {}
    for item in items:
        name, _, path = item.rpartition("=")
        weights[name] = resolve_path(path, f"--teacher-weights {item}")
    return weights


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", required=True, help="config files, one table row each")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (FIRST..FIRST+N-1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed (e.g. to split one table's seeds over two processes writing the same OUT)")
    p.add_argument("--out", default="ablation_output", help="output folder (runs, teachers, tables)")
    p.add_argument("--table", default="table",
                   help="name of the table files OUT/<table>.{md,json} (tables of one OUT share its runs)")
    p.add_argument("--teacher-weights", nargs="+", default=[], metavar="[TEACHER=]WEIGHTS",
                   help="trained teachers for the distillation rows, as TEACHER_CONFIG_NAME=PATH "
                        "(e.g. teacher_R50_FPN=t.pth) or one PATH for every teacher (default: train them)")
    p.add_argument("--teacher-opts", nargs="*", default=[], help="extra KEY VALUE overrides of the teacher training only")
    p.add_argument("--reference", nargs="+", default=None, metavar="CONFIG",
                   help="rows every row is compared with, seed by seed (config names; default: the first config)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: build the tables from the runs already finished in OUT (other runs, and the "
                        "comparisons of rows with none, are left out)")
    p.add_argument("--compare", nargs="+", default=[], metavar="CANDIDATE:REFERENCE",
                   help="extra paired comparisons between rows, e.g. t3_3_ld:t3_1_baseline (the effect of LD)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE overrides of every run (after `--` when --teacher-opts comes before them)")
    args = p.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("detectron2", "hkd_d2"):
        setup_logger(output=str(out / "log.txt"), name=name, abbrev_name=name[:3])
    runs = plan_runs(args.configs, args.seeds, out, args.first_seed)
    references = [config_name(r) for r in (args.reference or args.configs[:1])]
    pairs = parse_comparisons(args.compare)
    stems = {r.name for r in runs}
    unknown = sorted({n for n in references + [n for pair in pairs for n in pair]} - stems)
    if unknown:  # before any training: a typo must not cost the whole ablation
        raise ValueError(f"--reference/--compare name configs that are not in --configs: {unknown}")
    if args.report_only:
        missing = [f"{r.name} seed {r.seed}" for r in runs if not r.finished()]
        if missing:
            logger.warning(f"--report-only: {len(missing)} run(s) not finished, left out: {', '.join(missing)}")
        runs = [r for r in runs if r.finished()]
        for run in runs:
            check_overrides(run, args.opts)
        results = [json.loads(r.result_path.read_text()) for r in runs]
        references, pairs = only_finished_rows(references, pairs, {r.name for r in runs})
    else:
        results = run_ablation(runs, args.opts, out, teacher_weights=parse_teacher_weights(args.teacher_weights),
                               teacher_opts=args.teacher_opts)
    rows = summarize_ablation(results)
    comparisons = paired_comparisons(results, rows, references, pairs)
    table = ablation_table(rows, references)
    text = (table + "\n\nMR: log-average miss rate (%), mean ± std [min-max] over seeds. Gain: paired over seeds, "
            "MR(reference) - MR(row) in points on Reasonable (positive = the row is better), mean [95% t interval] "
            "wins/losses.\n")
    if comparisons:
        text += "\n" + comparison_table(comparisons) + "\n"
    environments = run_environments(results)
    text += "\n" + environment_note(environments) + "\n"
    write_json(out / f"{args.table}.json", {
        "overrides": args.opts, "references": references, "rows": rows, "comparisons": comparisons,
        "environment": environments[0]["environment"] if len(environments) == 1 else None,
        "environments": environments, "runs": results})
    write_text(out / f"{args.table}.md", text)
    print(text)
    return rows


if __name__ == "__main__":
    main()

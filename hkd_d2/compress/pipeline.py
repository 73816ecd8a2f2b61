"""``hkd-compress`` end to end: teacher stage maps, the stage interface, candidates and their
costs, block-wise training, held-out block losses, one student per budget (config + weights),
the report.

Output folder (written whole or not at all)::

    OUT/candidates.json                          every candidate: spec, cost, training and block loss
    OUT/<budget>/compact_<budget>_student.yaml   compact student, _BASE_ the plain student config
    OUT/<budget>/student_init.pth                its stitched weights (MODEL.WEIGHTS of that config)
    OUT/<budget>/compact_<budget>_hkd.yaml       the same student under HKD (_BASE_ the HKD config),
    OUT/<budget>/hkd_init.pth                    and its weights
    OUT/<budget>/selection.json                  chosen blocks, predicted and measured cost
    OUT/report.md, report.json, budget_vs_cost.png

Config names differ across budgets, as ``tools/ablation.py`` requires of the configs of one table.
"""
import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import build_model

from ..atomic import atomic_output
from ..checkpoint import load_detector_weights
from ..export import student_config
from ..tools.report import write_json, write_text
from .blockwise import Schedule, block_losses, train_blockwise
from .budget import Budget, Selection, parse_budgets, select_blocks
from .candidates import CandidateSet, build_candidate, candidate_grid
from .costs import Cost, backbone_cost, candidate_cost, padded_size, stage_input_sizes
from .images import ImageSource
from .interface import StageInterface, fit_interface
from .report import measure, plot_report, report_markdown
from .stitch import compact_overrides, config_with, stitch_state_dict, write_config, write_weights
from .teacher_stages import TeacherStages

__all__ = ["CompressOptions", "run_compress"]

logger = logging.getLogger(__name__)

# The configs written per budget: name -> the CompressOptions field holding its _BASE_.
RUNS = {"student": "student_base", "hkd": "hkd_base"}


@dataclass
class CompressOptions:
    """Everything ``hkd-compress`` takes (see ``hkd-compress --help`` for each)."""

    teacher_config: str
    teacher_weights: str
    dataset: str
    # Budget bounds as given on the command line (numbers, or fractions of the teacher such as "0.5x").
    max_gmacs: Sequence[str]
    max_params: Sequence[str]
    out: str
    student_base: str
    hkd_base: Optional[str]
    input_size: Tuple[int, int] = (240, 320)
    train_size: Optional[Tuple[int, int]] = None
    candidates: CandidateSet = field(default_factory=CandidateSet)
    interface: Optional[List[int]] = None
    norm: Optional[str] = None
    schedule: Schedule = field(default_factory=Schedule)
    batch_size: int = 2
    eval_images: int = 8
    pca_batches: int = 4
    fpn: str = "teacher"
    heads: str = "teacher"
    compare: Sequence[str] = ()
    latency_repeats: int = 3
    device: str = "cpu"
    seed: int = 0
    run_root: str = "./output/compress"


class _CandidatePool:
    """The teacher, the interface, every candidate with its cost and losses."""

    def __init__(self, options: CompressOptions, teacher: TeacherStages):
        self.options = options
        self.teacher = teacher
        self.source = ImageSource(options.dataset, options.train_size or options.input_size,
                                  self.teacher.cfg.INPUT.FORMAT, options.eval_images, options.seed)
        batches = self.source.training_batches(options.batch_size)
        self.interface: StageInterface = fit_interface(
            (self.teacher(next(batches)) for _ in range(options.pca_batches)), options.interface or self.teacher.widths)
        self.norm = options.norm or self.teacher.cfg.MODEL.RESNETS.NORM
        self.grid = candidate_grid(self.interface.channels, options.candidates)
        self.modules = [[build_candidate(c, self.norm).to(options.device) for c in stage] for stage in self.grid]
        self.labels = [[c.label() for c in stage] for stage in self.grid]
        self.costs = self._candidate_costs()
        self.batches = batches
        self.train_losses: List[List[float]] = []
        self.losses: List[List[float]] = []
        logger.info(f"{sum(map(len, self.grid))} candidates ({', '.join(str(len(s)) for s in self.grid)} per stage); "
                    f"interface channels {self.interface.channels}; norm {self.norm}")

    def train(self) -> None:
        """Block-wise training of every candidate, then its block loss on the held-out images."""
        codes = (self.interface.encode(self.teacher(b)) for b in self.batches)
        self.train_losses = train_blockwise(self.modules, codes, self.options.schedule, self.labels)
        held_out = [self.interface.encode(self.teacher(b)) for b in self.source.held_out_batches(self.options.batch_size)]
        self.losses = block_losses(self.modules, held_out)
        for stage, losses in zip(self.grid, self.losses):
            if not any(l < float("inf") for l in losses):
                raise FloatingPointError(f"Every candidate of {stage[0].stage} diverged (loss not finite); lower --lr")

    def _candidate_costs(self) -> List[List[Cost]]:
        h, w = padded_size(*self.options.input_size, self.teacher.detector.backbone.size_divisibility)
        image = torch.zeros(1, 3, h, w, device=self.options.device)
        sizes = stage_input_sizes(self.teacher.stage_maps(image))
        return [[candidate_cost(m, c.in_channels, sizes[k]) for m, c in zip(self.modules[k], stage)]
                for k, stage in enumerate(self.grid)]

    def overrides(self, indices: Sequence[int]) -> Dict:
        specs = [stage[i].spec for stage, i in zip(self.grid, indices)]
        stem_norm = self.teacher.cfg.MODEL.RESNETS.NORM
        return compact_overrides(specs, self.teacher.channels[0], "" if stem_norm == self.norm else stem_norm,
                                 self.norm, self.teacher.cfg, self.options.fpn == "teacher")

    def select(self, budget: Budget, shared: Cost, losses: Optional[List[List[float]]] = None) -> Selection:
        """The exact choice within ``budget`` by ``losses`` (default: the block losses)."""
        return select_blocks(self.losses if losses is None else losses, [[c.params for c in s] for s in self.costs],
                             [[c.gmacs for c in s] for s in self.costs], budget, (shared.params, shared.gmacs))

    def shared_cost(self) -> Cost:
        """Stem + FPN: a built student's backbone cost less its candidates' (the first of each stage)."""
        first = [0] * len(self.grid)
        model = build_model(self._student_cfg(self.options.student_base, self.overrides(first)))
        total = backbone_cost(model, *self.options.input_size)
        for stage in self.costs:
            total = total - stage[0]
        return total

    def _student_cfg(self, base: str, overrides: Dict):
        cfg = student_config(config_with(base, overrides))
        cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", self.options.device
        return cfg

    def candidate_table(self) -> List[Dict]:
        return [{"stage": c.stage, **asdict(c.spec), "params": cost.params, "gmacs": cost.gmacs,
                 "train_mse": train, "block_loss": loss}
                for k, stage in enumerate(self.grid)
                for c, cost, train, loss in zip(stage, self.costs[k], self.train_losses[k], self.losses[k])]

    def write_student(self, budget: Budget, indices: Sequence[int], tmp: Path, final: Path) -> Dict:
        """Write the configs and weights of one student under ``tmp`` (naming the ``final`` paths)
        and load each back strictly. Returns the student detector (of the "student" config) and,
        per written config, its final path and OUTPUT_DIR."""
        runs, model = {}, None
        for name, base_option in RUNS.items():
            base = getattr(self.options, base_option)
            if not base:
                continue
            overrides = copy.deepcopy(self.overrides(indices))
            overrides["MODEL"]["WEIGHTS"] = str(final / f"{name}_init.pth")
            if name == "hkd":
                overrides["MODEL"]["TEACHER"] = {"CONFIG_FILE": str(Path(self.options.teacher_config).resolve()),
                                                 "WEIGHTS": str(Path(self.options.teacher_weights).resolve())}
            overrides["OUTPUT_DIR"] = f"{self.options.run_root}/{budget.label()}/{name}"
            student = build_model(self._student_cfg(base, overrides))
            stages = [self.modules[k][i] for k, i in enumerate(indices)]
            state = stitch_state_dict(student, self.teacher.detector, stages, self.interface,
                                      self.options.fpn, self.options.heads)
            write_weights(tmp / f"{name}_init.pth", state)
            config_name = f"compact_{budget.label()}_{name}.yaml"
            write_config(tmp / config_name, base, overrides)
            load_detector_weights(student, str(tmp / f"{name}_init.pth"))
            runs[name] = {"config": str(final / config_name), "output_dir": overrides["OUTPUT_DIR"]}
            if model is None:
                model = student
        return {"model": model, "runs": runs}


def _reference_rows(options: CompressOptions, inputs, repeats: int) -> List[Dict]:
    rows = []
    for name, config in [("teacher", options.teacher_config), *((Path(c).stem, c) for c in options.compare)]:
        cfg = student_config(config_with(config, {"MODEL": {"DEVICE": options.device, "WEIGHTS": ""}}))
        rows.append(measure(name, build_model(cfg), inputs, options.input_size, repeats))
    return rows


def _commands(runs: Dict[str, Dict[str, Dict[str, str]]]) -> str:
    """Markdown: the train_net.py commands that fine-tune and evaluate each budget's students."""
    lines = ["", "## Training and evaluating each budget's student", "", "```bash"]
    for label, written in runs.items():
        lines.append(f"# {label}")
        for run in written.values():
            lines += [f"python train_net.py --config-file {run['config']}",
                      f"python train_net.py --config-file {run['config']} --eval-only "
                      f"MODEL.WEIGHTS {run['output_dir']}/model_final.pth"]
    return "\n".join(lines + ["```", ""])


def run_compress(options: CompressOptions) -> Dict:
    """Run ``hkd-compress``; return the report (also written to ``OUT/report.json``)."""
    if not (options.max_gmacs or options.max_params):
        raise ValueError("No budget given: pass --max-gmacs and/or --max-params")
    final = Path(options.out).resolve()
    if final.exists():
        raise FileExistsError(f"{final} already exists; remove it or choose another --out")
    torch.manual_seed(options.seed)
    teacher = TeacherStages(options.teacher_config, options.teacher_weights, options.device)
    teacher_cost = backbone_cost(teacher.detector, *options.input_size)
    budgets = parse_budgets(options.max_gmacs, options.max_params, teacher_cost.gmacs, teacher_cost.params / 1e6)
    pool = _CandidatePool(options, teacher)
    shared = pool.shared_cost()
    for budget in budgets:  # an impossible budget fails before the training, not after
        pool.select(budget, shared, [[0.0] * len(stage) for stage in pool.grid])
    pool.train()
    inputs = pool.source.held_out_batches(1)[0]
    rows = _reference_rows(options, inputs, options.latency_repeats)
    selections, runs = [], {}
    table = pool.candidate_table()
    offsets = [sum(map(len, pool.grid[:k])) for k in range(len(pool.grid))]
    with atomic_output(final, is_dir=True) as tmp:
        write_json(tmp / "candidates.json", {"shared": asdict(shared), "candidates": table})
        for budget in budgets:
            choice = pool.select(budget, shared)
            student = pool.write_student(budget, choice.indices, tmp / budget.label(), final / budget.label())
            row = measure(f"compact {budget.label()}", student["model"], inputs, options.input_size,
                          options.latency_repeats, budget, choice.loss)
            selection = {"budget": asdict(budget), "summed_block_loss": choice.loss,
                         "predicted": {"params": choice.params, "gmacs": choice.gmacs},
                         "measured": {"params": row["backbone_params_M"] * 1e6, "gmacs": row["backbone_GMACs"]},
                         "stages": [table[offsets[k] + i] for k, i in enumerate(choice.indices)],
                         "runs": student["runs"]}
            write_json(tmp / budget.label() / "selection.json", selection)
            logger.info(f"Budget {budget.label()}: " + "; ".join(pool.labels[k][i] for k, i in enumerate(choice.indices))
                        + f" -> {row['backbone_GMACs']:.3f} GMACs, {row['backbone_params_M']:.2f} M backbone parameters")
            rows.append(row)
            selections.append(selection)
            runs[budget.label()] = student["runs"]
        report = {"input_size": list(options.input_size), "threads": torch.get_num_threads(), "rows": rows,
                  "selections": selections, "shared": asdict(shared), "interface": pool.interface.channels}
        write_json(tmp / "report.json", report)
        write_text(tmp / "report.md", "# hkd-compress\n\n" + report_markdown(rows, options.input_size,
                                                                             torch.get_num_threads()) + _commands(runs))
        plot_report(rows, tmp / "budget_vs_cost.png", f"hkd-compress, {options.input_size[0]}x{options.input_size[1]}")
    logger.info(f"Wrote {final}")
    return report

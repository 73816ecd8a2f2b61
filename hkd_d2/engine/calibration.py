"""Loss calibration of a distiller: raw distillation terms against the detection loss.

A distillation term trains on ``weight * L`` (``L`` its raw value). :func:`measure_losses` runs the
distiller in training mode, without gradients, on a few batches and averages the detection loss
and each term's raw ``L`` (the sum of its raw losses), as the distiller reports them
(:class:`~hkd_d2.modeling.StepLosses`). The *balance rule*
(:func:`balanced_weights`) gives each term the weight that makes it ``target`` times the detection
loss on those batches: ``lambda = target * L_det / L``.

:class:`LossBalanceHook` uses it when training starts: with ``MODEL.DISTILL.AUTO_BALANCE.ENABLED``
it measures, sets every term's weight by the rule (recorded in the log, in ``OUTPUT_DIR/config.yaml``
and in ``OUTPUT_DIR/auto_balance.json``, which ``--resume`` reuses instead of measuring again), and in
every distillation run it logs the first iteration's terms as fractions of the detection loss,
so a term that swamps detection shows in the log at once.
"""
import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List

import torch
from torch import nn
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..atomic import atomic_output
from ..modeling.distill import unwrap_ddp
from ..modeling.distiller import Distiller

__all__ = ["LossMeasurement", "measure_losses", "balanced_weights", "apply_weights", "format_measurement",
           "LossBalanceHook", "AUTO_BALANCE_FILE"]

logger = logging.getLogger(__name__)

# Written in OUTPUT_DIR when AUTO_BALANCE chose the weights; reused on --resume.
AUTO_BALANCE_FILE = "auto_balance.json"


@dataclass
class LossMeasurement:
    """Mean losses over the measured batches (floats).

    ``raw``, ``weights``, ``weight_keys`` are keyed by term class name; ``losses`` by loss name.
    """

    detection: float
    raw: Dict[str, float] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)
    weight_keys: Dict[str, str] = field(default_factory=dict)
    batches: int = 0

    def ratio(self, term: str) -> float:
        """The weighted term over the detection loss."""
        return self.weights[term] * self.raw[term] / self.detection


def _term_key(term: nn.Module) -> str:
    key = getattr(term, "WEIGHT_KEY", None)
    if not key:
        raise AttributeError(f"Distillation term {type(term).__name__} declares no CONFIG_NODE (the node of its WEIGHT)")
    return key


def measure_losses(model: nn.Module, batches: Iterable[List[Dict]]) -> LossMeasurement:
    """Average detection loss and raw term values of ``model`` (a :class:`Distiller`) on ``batches``.

    Runs in training mode (losses need it) under ``torch.no_grad()`` with no schedule (every
    term's factor 1: ``distill_iter`` None); the model's mode and iteration are restored afterwards.
    """
    model = unwrap_ddp(model)
    if not isinstance(model, Distiller) or not model.distill_terms:
        raise TypeError("Loss calibration needs a Distiller with at least one distillation term")
    terms = {type(t).__name__: t for t in model.distill_terms}
    sums = {name: 0.0 for name in terms}
    detection, n = 0.0, 0
    was_training, iteration = model.training, model.distill_iter
    model.train()
    model.distill_iter = None
    try:
        with torch.no_grad(), EventStorage():
            for batch in batches:
                model(batch)
                losses = model.last_losses
                detection += float(sum(losses.detection.values()))
                for name, raw in losses.raw.items():
                    sums[name] += float(sum(raw.values()))
                n += 1
    finally:
        model.train(was_training)
        model.distill_iter = iteration
    if n == 0:
        raise ValueError("No batch to measure the losses on")
    return LossMeasurement(
        detection=detection / n, raw={k: v / n for k, v in sums.items()},
        weights={k: t.weight for k, t in terms.items()}, weight_keys={k: _term_key(t) for k, t in terms.items()},
        batches=n,
    )


def balanced_weights(measurement: LossMeasurement, target: float) -> Dict[str, float]:
    """{term: weight} with ``weight * raw = target * detection`` (a term measured 0 keeps its weight)."""
    if target <= 0:
        raise ValueError(f"The balance target must be > 0, got {target}")
    return {name: (target * measurement.detection / raw if raw > 0 else measurement.weights[name])
            for name, raw in measurement.raw.items()}


def apply_weights(model: nn.Module, cfg: CfgNode, weights: Dict[str, float]) -> CfgNode:
    """Set each term's weight on the model and under its ``WEIGHT_KEY`` in a copy of ``cfg``."""
    cfg = cfg.clone()
    cfg.defrost()
    for term in unwrap_ddp(model).distill_terms:
        name = type(term).__name__
        if name in weights:
            term.weight = float(weights[name])
            cfg.merge_from_list([_term_key(term), term.weight])
    cfg.freeze()
    return cfg


def _average_over_processes(m: LossMeasurement) -> LossMeasurement:
    """Every process measured its own batches: average them so all ranks get the same weights."""
    gathered = comm.all_gather(asdict(m))
    if len(gathered) == 1:
        return m
    return LossMeasurement(
        detection=sum(g["detection"] for g in gathered) / len(gathered),
        raw={k: sum(g["raw"][k] for g in gathered) / len(gathered) for k in m.raw},
        weights=m.weights, weight_keys=m.weight_keys, batches=sum(g["batches"] for g in gathered),
    )


def format_measurement(m: LossMeasurement, target: float) -> str:
    """One line per term: raw value, weight, weighted / detection, the weight the rule gives."""
    rule = balanced_weights(m, target)
    lines = [f"detection loss {m.detection:.4f} (mean of {m.batches} batch(es))"]
    for name in m.raw:
        lines.append(f"{name}: raw {m.raw[name]:.4f}, weight {m.weights[name]:.4g} -> {m.ratio(name):.2f}x detection; "
                     f"weight for {target:g}x: {rule[name]:.4g} ({m.weight_keys[name]})")
    return "\n".join(lines)


class LossBalanceHook(HookBase):
    """Auto-balances the term weights before training (opt-in) and logs the first iteration's
    terms as fractions of the detection loss."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        ab = cfg.MODEL.DISTILL.AUTO_BALANCE
        self.enabled, self.target, self.num_batches = bool(ab.ENABLED), float(ab.TARGET), int(ab.BATCHES)
        self.path = os.path.join(cfg.OUTPUT_DIR, AUTO_BALANCE_FILE)

    def before_train(self) -> None:
        if not self.enabled:
            return
        model = unwrap_ddp(self.trainer.model)
        measured = None
        if self.trainer.start_iter > 0 and os.path.isfile(self.path):
            with open(self.path) as f:
                weights = json.load(f)["weights"]
            logger.info(f"AUTO_BALANCE: resuming with the weights chosen at the start ({self.path}): {weights}")
        else:
            loader = self.trainer.build_train_loader(self.cfg)
            measured = _average_over_processes(measure_losses(model, itertools.islice(iter(loader), self.num_batches)))
            weights = balanced_weights(measured, self.target)
            logger.info(f"AUTO_BALANCE (target {self.target:g}x the detection loss):\n"
                        + format_measurement(measured, self.target))
        self.trainer.cfg = apply_weights(model, self.trainer.cfg, weights)
        if measured is not None and comm.is_main_process():
            self._record(measured, weights, self.trainer.cfg)
        logger.info("AUTO_BALANCE weights: " + ", ".join(
            f"{_term_key(t)} = {t.weight:.4g}" for t in model.distill_terms))

    def _record(self, m: LossMeasurement, weights: Dict[str, float], cfg: CfgNode) -> None:
        with atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps({"target": self.target, "measured": asdict(m), "weights": weights}, indent=2))
        config_file = os.path.join(self.cfg.OUTPUT_DIR, "config.yaml")
        if os.path.isfile(config_file):  # the config Detectron2's default_setup saved: keep it truthful
            with atomic_output(config_file) as tmp:
                tmp.write_text(cfg.dump())

    def after_step(self) -> None:
        losses = unwrap_ddp(self.trainer.model).last_losses
        if self.trainer.iter != self.trainer.start_iter or losses is None:
            return
        detection = float(sum(losses.detection.values()))
        terms = {k: float(v) for k, v in sorted(losses.distillation.items())}
        if terms and detection > 0:
            logger.info(f"First iteration: detection loss {detection:.4f}; " + ", ".join(
                f"{k} {v:.4f} ({v / detection:.2f}x)" for k, v in terms.items())
                + " (weighted, after the schedule factor)")

"""``train_net.py`` / ``hkd-train`` / ``hkd-eval``: train or evaluate with Detectron2's usual flags.

    hkd-train --config-file CONFIG [--resume] [--num-gpus N] [KEY VALUE ...]
    hkd-eval  --config-file CONFIG MODEL.WEIGHTS model_final.pth [KEY VALUE ...]

``--eval-only`` on a distillation config evaluates its student alone (no teacher is built).
"""
import argparse
from typing import Dict, Optional, Sequence

from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

from ..data.register import UnregisteredDatasetError
from ..engine import Trainer, setup_config
from ..engine.evaluate import build_test_checkpointer, build_test_model

__all__ = ["main", "eval_main", "run"]


def run(args: argparse.Namespace) -> Optional[Dict]:
    """One process's work: train (resuming when ``args.resume``) or, with ``args.eval_only``,
    load ``MODEL.WEIGHTS`` (or the last checkpoint) and evaluate."""
    cfg = setup_config(args)
    try:
        if args.eval_only:
            model = build_test_model(cfg)
            build_test_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            results = Trainer.test(cfg, model)
            verify_results(cfg, results)
            return results
        trainer = Trainer(cfg)
    except UnregisteredDatasetError as e:
        raise SystemExit(f"{args.config_file}: {e}") from None
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _launch(args: argparse.Namespace) -> None:
    launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``train_net.py`` / ``hkd-train``: Detectron2's ``default_argument_parser`` flags."""
    _launch(default_argument_parser().parse_args(argv))


def eval_main(argv: Optional[Sequence[str]] = None) -> None:
    """``hkd-eval``: ``hkd-train --eval-only``."""
    args = default_argument_parser().parse_args(argv)
    args.eval_only = True
    _launch(args)


if __name__ == "__main__":
    main()

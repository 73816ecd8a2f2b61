"""``python -m hkd_d2.tools.srm_dictionary``: SRM's stage 1 on its own, for several trainings to share.

    python -m hkd_d2.tools.srm_dictionary --config-file configs/synthetic/literature/srm.yaml \\
        --out srm_dictionary.pth [--iters N] [KEY VALUE ...]

Learns the teacher dictionaries of the config's ``MODEL.DISTILL.SRM`` levels on the frozen teacher
(``MODEL.TEACHER``) from ``DATASETS.TRAIN`` batches, as :class:`~hkd_d2.modeling.distill.srm.SRMDictionaryHook`
does before a training, and writes them where ``MODEL.DISTILL.SRM.DICTIONARY_FILE`` can name them.
One process.
"""
import argparse
import logging
from typing import List, Optional, Sequence

from detectron2.utils.logger import setup_logger

from ..data.register import register_config_datasets
from ..engine import load_config, resolve_device
from ..modeling.distill.srm import TeacherCodebook, learn_dictionaries, save_dictionaries, teacher_feature_batches
from ..modeling.teacher import build_teacher

__all__ = ["main", "write_dictionaries"]

logger = logging.getLogger("hkd_d2.srm_dictionary")


def write_dictionaries(
    config_file: str, out: str, iters: Optional[int] = None, opts: Sequence[str] = ()
) -> List[float]:
    """Learn the teacher dictionaries of ``config_file`` (``iters`` Adam steps, default
    ``MODEL.DISTILL.SRM.DICTIONARY_ITERS``) and write them to ``out``; the loss of every step."""
    cfg = resolve_device(load_config(config_file, list(opts)))
    register_config_datasets(cfg)
    iters = cfg.MODEL.DISTILL.SRM.DICTIONARY_ITERS if iters is None else iters
    if iters <= 0:
        raise ValueError(f"--iters (or MODEL.DISTILL.SRM.DICTIONARY_ITERS) must be > 0, got {iters}")
    teacher = build_teacher(cfg)
    codebook = TeacherCodebook.from_config(cfg, teacher.detector.backbone.output_shape()).to(teacher.device)
    batches = teacher_feature_batches(cfg, teacher)
    losses = learn_dictionaries(batches, codebook, iters, cfg.MODEL.DISTILL.SRM.DICTIONARY_LR)
    save_dictionaries(codebook, out, teacher_weights=cfg.MODEL.TEACHER.WEIGHTS)
    logger.info("SRM dictionaries (reconstruction MSE %.4g -> %.4g over %d iterations) written to %s",
                losses[0], losses[-1], len(losses), out)
    return losses


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="SRM stage 1: learn the teacher's sparse-coding dictionaries.")
    parser.add_argument("--config-file", required=True, help="a config with SRMDistill and its teacher")
    parser.add_argument("--out", required=True, help="dictionary file to write (for MODEL.DISTILL.SRM.DICTIONARY_FILE)")
    parser.add_argument("--iters", type=int, default=None,
                        help="Adam steps (default: MODEL.DISTILL.SRM.DICTIONARY_ITERS)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    setup_logger(name="hkd_d2")
    write_dictionaries(args.config_file, args.out, args.iters, args.opts)


if __name__ == "__main__":
    main()

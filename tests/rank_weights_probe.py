"""``train_net.py`` for the multi-process tests, with one addition: every process saves the model
weights it starts and ends training with, as ``OUTPUT_DIR/rank<k>_start.pth`` and
``rank<k>_end.pth`` (Detectron2 writes checkpoints from the main process only).

    python -m tests.rank_weights_probe <train_net.py arguments>

Run it with ``-m`` from the repository root: ``launch`` starts each training process with
multiprocessing's spawn, which imports this module again (as ``__mp_main__``) in that process, so
the patch below acts there too.
"""
import os
from typing import Any, Callable

import torch
from detectron2.utils import comm

from hkd_d2.engine import Trainer
from hkd_d2.modeling.distill import unwrap_ddp
from hkd_d2.tools.train import main

_train: Callable[[Trainer], Any] = Trainer.train


def _save_weights(trainer: Trainer, stage: str) -> None:
    state = {k: v.detach().cpu().clone() for k, v in unwrap_ddp(trainer.model).state_dict().items()}
    torch.save(state, os.path.join(trainer.cfg.OUTPUT_DIR, f"rank{comm.get_rank()}_{stage}.pth"))


def _train_saving_weights(self: Trainer) -> Any:
    _save_weights(self, "start")  # after the DDP wrap (rank 0's weights broadcast) and the resume
    result = _train(self)
    _save_weights(self, "end")
    return result


Trainer.train = _train_saving_weights

if __name__ == "__main__":
    main()

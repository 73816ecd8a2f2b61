"""SIGINT / SIGTERM during training: finish the iteration, save a checkpoint, exit cleanly.

A cluster scheduler sends SIGTERM before it preempts a job, and Ctrl-C sends SIGINT. While
training runs, :class:`StopOnSignal` turns either into a request: after the current iteration
every process saves ``model_<iter>.pth`` (atomically, through the trainer's checkpointer) and
raises :class:`TrainingInterrupted`, which the trainer reports in one line before the process
exits with status 128 + the signal number. ``--resume`` continues from that checkpoint. A
second signal while the first is being handled stops at once (``KeyboardInterrupt``).

The handlers are installed in ``before_train``, before the training data loader starts its
worker processes, so the workers inherit them and are not killed by a Ctrl-C either.
"""
import logging
import os
import signal
import threading
from typing import Dict, Optional, Sequence

from detectron2.engine import HookBase

from .guards import any_rank

__all__ = ["StopOnSignal", "TrainingInterrupted"]

logger = logging.getLogger(__name__)

# Signals that request a checkpoint and a clean stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Exit status of a process stopped by signal N, as shells report it.
SIGNAL_EXIT_BASE = 128


class TrainingInterrupted(BaseException):
    """Training stopped on a signal after saving a checkpoint.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that Detectron2's training loop, which
    logs every ``Exception`` as a crash, lets it through quietly.
    """

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        name = signal.Signals(signum).name if signum > 0 else "a signal on another process"
        super().__init__(
            f"Training stopped by {name} after iteration {iteration}; saved {checkpoint or 'nothing (not the main process)'}. "
            "Run again with --resume to continue from it."
        )
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT_BASE + max(self.signum, 0)


class StopOnSignal(HookBase):
    """Saves a checkpoint and raises :class:`TrainingInterrupted` after a SIGINT/SIGTERM."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        """
        Args:
            signals: signal numbers that request a stop.
        """
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._owner_pid = os.getpid()

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._owner_pid:  # a data-loader worker: the main process decides
            return
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without saving")
        self.received = signum
        logger.warning(f"{signal.Signals(signum).name} received: saving a checkpoint after this iteration")

    def before_train(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training outside the main thread: SIGINT/SIGTERM will not save a checkpoint")
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}

    def after_train(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def after_step(self) -> None:
        if not any_rank(self.received is not None):
            return
        iteration = self.trainer.iter
        if iteration >= self.trainer.max_iter - 1:  # the last iteration: training ends normally
            return
        checkpointer = self.trainer.checkpointer
        name = f"model_{iteration:07d}"
        tagged = os.path.basename(checkpointer.get_checkpoint_file()) if checkpointer.has_checkpoint() else ""
        if tagged != f"{name}.pth":  # not saved by the periodic checkpointer this very iteration
            checkpointer.save(name, iteration=iteration)
        saved = checkpointer.get_checkpoint_file() if checkpointer.save_to_disk else ""
        raise TrainingInterrupted(self.received if self.received is not None else -1, iteration, saved)

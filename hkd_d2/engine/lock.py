"""One training per OUTPUT_DIR: an exclusive lock on ``OUTPUT_DIR/.train.lock``.

The lock is an advisory ``flock`` held by the main process for as long as it trains; the
operating system drops it when the process ends, however it ends (a ``kill -9`` leaves no
stale lock). A second training into the same folder is refused at once with
:class:`OutputDirBusyError`, naming the folder and the process that holds it. ``flock`` is
local to one machine (and unreliable on some network file systems).
"""
import fcntl
import os
import socket
import weakref
from typing import Optional

from detectron2.utils import comm

from .guards import any_rank

__all__ = ["LOCK_FILE", "OutputDirBusyError", "OutputDirLock", "lock_output_dir"]

LOCK_FILE = ".train.lock"


class OutputDirBusyError(RuntimeError):
    """Another training holds the lock of this OUTPUT_DIR."""


class OutputDirLock:
    """An exclusive, non-blocking lock on ``<output_dir>/.train.lock``."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._close: Optional[weakref.finalize] = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputDirBusyError` naming the folder and the holder."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise OutputDirBusyError(
                f"OUTPUT_DIR {os.path.dirname(self.path)} is in use by another training ({holder}); "
                "wait for it to finish or choose another OUTPUT_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        # Closing the descriptor releases the flock: on release(), or when this object is collected.
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; only the lock on it matters."""
        if self._close is not None:
            self._close()
            self._close = None


def lock_output_dir(output_dir: str) -> OutputDirLock:
    """Lock ``output_dir`` on the main process; every process raises if the lock is taken.

    Every process must call this at the same point (the outcome is shared between them).
    """
    lock = OutputDirLock(output_dir)
    error: Optional[OutputDirBusyError] = None
    if comm.is_main_process():
        try:
            lock.acquire()
        except OutputDirBusyError as e:
            error = e
    if any_rank(error is not None):
        raise error or OutputDirBusyError(f"OUTPUT_DIR {output_dir} is in use by another training")
    return lock

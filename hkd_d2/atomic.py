"""Atomic output: a file or folder appears complete or not at all (never half-written).

A file is written under a temporary name in its own folder, flushed to disk (``fsync``) and
renamed onto its final name; the folder is then synced so the rename itself survives a crash.
A kill at any moment leaves either the previous file or the new one, never a truncated one.
A full disk raises :class:`DiskFullError`, which names the file and its folder.
"""
import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["DiskFullError", "atomic_output", "fsync_path"]


class DiskFullError(OSError):
    """No space left on the device while writing a file; names the file, its folder and the free space.

    Args:
        path: the file (or folder) that could not be written.
        note: what the caller wants the user to know (e.g. which earlier file is still intact).
    """

    def __init__(self, path: Union[str, os.PathLike], note: str = ""):
        path = Path(path)
        folder = path.parent
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        message = f"No space left on device writing {path.name} in folder {folder} ({free})"
        super().__init__(errno.ENOSPC, message + (f"; {note}" if note else ""))
        self.path = path


def _is_disk_full(error: BaseException) -> bool:
    """True when ``error`` or an exception it arose from is ``OSError(ENOSPC)`` (torch.save's
    zip writer, for one, replaces it with a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def fsync_path(path: Union[str, os.PathLike]) -> None:
    """Flush a file, or a folder's entries, from the OS cache to the disk (POSIX; no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

# Modes before the umask of what ``open()`` / ``os.mkdir`` create (mkstemp/mkdtemp use 0o600/0o700).
FILE_MODE = 0o666
DIR_MODE = 0o777


@contextlib.contextmanager
def atomic_output(path: Union[str, os.PathLike], is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The block writes (and closes) the temporary file; it is then fsynced, renamed onto ``path``
    and the folder fsynced. ``OSError(ENOSPC)`` anywhere becomes :class:`DiskFullError`.
    The result gets the permissions a plain ``open()`` / ``os.mkdir`` would give it (0644 /
    0755 under the usual umask 022), as Detectron2's own outputs have.

    Args:
        path: final file (or directory when ``is_dir``) to produce.
        is_dir: produce a directory. It must not exist yet (a directory is never overwritten).
            Its files are not fsynced one by one (generated data sets hold many).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        if path.exists():
            raise FileExistsError(f"{path} already exists; remove it or choose another output")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        # The final suffix last, for writers that pick the format from it (cv2, matplotlib).
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (DIR_MODE if is_dir else FILE_MODE) & ~umask)  # mkstemp/mkdtemp make them private
    try:
        yield tmp
        if not is_dir:
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except Exception as e:
        if _is_disk_full(e) and not isinstance(e, DiskFullError):
            # Log files on this disk fail too: report the error once, not a traceback per record.
            logging.raiseExceptions = False
            raise DiskFullError(path, "a file already under that name is unchanged") from e
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()

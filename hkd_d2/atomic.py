"""Atomic output: a file or folder appears complete or not at all (never half-written)."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_output"]

# Modes before the umask of what ``open()`` / ``os.mkdir`` create (mkstemp/mkdtemp use 0o600/0o700).
FILE_MODE = 0o666
DIR_MODE = 0o777


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: Union[str, os.PathLike], is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The result gets the permissions a plain ``open()`` / ``os.mkdir`` would give it (0644 /
    0755 under the usual umask 022), as Detectron2's own outputs have.

    Args:
        path: final file (or directory when ``is_dir``) to produce.
        is_dir: produce a directory. It must not exist yet (a directory is never overwritten).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        if path.exists():
            raise FileExistsError(f"{path} already exists; remove it or choose another output")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (DIR_MODE if is_dir else FILE_MODE) & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()

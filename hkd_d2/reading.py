"""Reading input files (JSON, MATLAB) with errors that name the file and what is wrong with it.

Each caller gives the error class of its layer (the data readers' ``PedestrianDataError``, the
miss-rate inputs' ``MissRateInputError``), so its command line can tell bad input from a bug.
"""
import contextlib
import gc
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Type, Union

import scipy.io
from scipy.io.matlab import MatReadError

__all__ = ["gc_paused", "read_json", "read_mat"]

PathLike = Union[str, Path]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while parsing: a large JSON document is millions of
    new containers, and the collector would walk them again and again (no cycles to find)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_json(path: PathLike, what: str, error: Type[Exception] = ValueError) -> Any:
    """The parsed content of JSON file ``path`` (a ``what``, e.g. "ground truth").

    Raises:
        FileNotFoundError: no such file (the message names ``what`` and ``path``).
        error: a directory, a binary file, malformed JSON or an unreadable file.
    """
    try:
        with open(path) as f, gc_paused():
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a JSON file ({what})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file, expected JSON ({what})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON ({e})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None


def read_mat(path: PathLike, what: str, error: Type[Exception] = ValueError) -> Dict[str, Any]:
    """``scipy.io.loadmat(path)`` of a ``what``; a missing file raises ``FileNotFoundError`` and an
    unreadable one ``error``, both naming the file."""
    try:
        return scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except (ValueError, TypeError, OSError, MatReadError) as e:
        raise error(f"{path}: not a readable MATLAB file: {e}") from e

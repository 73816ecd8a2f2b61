"""The shell commands of README.md and datasets/README.md still match the tools they call.

Rules (so that the READMEs cannot drift from the code, while the test stays fast):

* every command (a line starting with a program such as ``.venv/bin/python``, ``bash``,
  ``apt-get``) of a ```bash or plain ``` block is read, continuation lines joined; Python commands must use ``.venv/bin/python`` and no command uses ``sudo``;
* every Python program named (``train_net.py``, ``tools/*.py``, ``datasets/*.py``,
  ``-m module``) is run in-process with ``--help``; it must exit 0 and list every ``--flag`` the
  README passes to it (flags in ``[...]`` included);
* a command whose comment contains ``tiny:`` is run whole, in an empty folder;
* ``benchmarks/`` scripts (no flags; they time work) and non-Python commands are not run.
"""
import contextlib
import io
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from ..conftest import REPO

READMES = [REPO / "README.md", REPO / "datasets" / "README.md"]
VENV_PYTHON = ".venv/bin/python"
TINY_MARK = "tiny:"
NOT_RUN = ("benchmarks/",)


# First words that make a code-block line a shell command (other lines are trees, config text).
COMMAND_WORDS = (VENV_PYTHON, "python", "python3", "bash", "pip", "apt-get", "sudo")


def shell_commands(readme: Path) -> List[Tuple[str, int]]:
    """(command, first line number) of each shell command in the file's bash/plain code blocks."""
    commands, block, pending, start = [], None, "", 0
    for number, line in enumerate(readme.read_text().splitlines(), start=1):
        if line.startswith("```"):
            block = None if block is not None else line[3:].strip()
            continue
        if block not in ("bash", ""):
            continue
        if not pending:
            start = number
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            if pending.split(" ", 1)[0] in COMMAND_WORDS:
                commands.append((pending.strip(), start))
            pending = ""
    return commands


def _python_program(command: str) -> List[str]:
    """``[script]`` or ``["-m", module]`` plus the arguments, for a ``.venv/bin/python`` command."""
    tokens = shlex.split(command.split(" && ")[-1], comments=True)
    return tokens[1:] if tokens and tokens[0] == VENV_PYTHON else []


ALL = [(readme, command, line) for readme in READMES for command, line in shell_commands(readme)]
PYTHON = [(r, c, n) for r, c, n in ALL if _python_program(c) and not _python_program(c)[0].startswith(NOT_RUN)]


def test_the_readmes_have_commands():
    assert len(ALL) > 20 and len(PYTHON) > 15


@pytest.mark.parametrize("readme,command,line", ALL, ids=[f"{r.parent.name}/{r.name}:{n}" for r, _, n in ALL])
def test_commands_use_the_venv_and_no_sudo(readme, command, line):
    words = shlex.split(command, comments=True)
    assert "sudo" not in words, f"{readme.name}:{line}: {command}"
    assert not any(w in ("python", "python3") for w in words), f"{readme.name}:{line}: use {VENV_PYTHON}: {command}"


_HELP: Dict[Tuple[str, ...], str] = {}


def _help(program: Tuple[str, ...]) -> str:
    """``--help`` output of a script or ``-m`` module, run in this process."""
    if program not in _HELP:
        out, argv = io.StringIO(), sys.argv
        sys.argv = [program[-1], "--help"]
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
                if program[0] == "-m":
                    runpy.run_module(program[1], run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(REPO / program[0]), run_name="__main__")
        finally:
            sys.argv = argv
        assert exit_info.value.code in (0, None), f"{' '.join(program)} --help exited {exit_info.value.code}"
        _HELP[program] = out.getvalue()
    return _HELP[program]


@pytest.mark.parametrize("readme,command,line", PYTHON, ids=[f"{r.parent.name}/{r.name}:{n}" for r, _, n in PYTHON])
def test_command_flags_exist(readme, command, line):
    args = _python_program(command)
    program = tuple(args[:2]) if args[0] == "-m" else (args[0],)
    help_text = _help(program)
    assert "usage:" in help_text
    flags = {a.strip("[]").split("=")[0] for a in args if a.strip("[").startswith("--")}
    missing = sorted(f for f in flags if not re.search(rf"{re.escape(f)}\b", help_text))
    assert not missing, f"{readme.name}:{line}: {' '.join(program)} has no {missing}"


TINY = [(r, c, n) for r, c, n in PYTHON if TINY_MARK in c]


def test_there_is_a_tiny_command():
    assert TINY


@pytest.mark.parametrize("readme,command,line", TINY, ids=[f"{r.name}:{n}" for r, _, n in TINY])
def test_tiny_commands_run(readme, command, line, tmp_path):
    args = _python_program(command)
    if args[0] != "-m":
        args[0] = str(REPO / args[0])
    run = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, f"{readme.name}:{line}: {command}\n{run.stderr[-2000:]}"

"""The shell commands of the user documentation still match the tools they call.

Documentation: README.md, docs/*.md, benchmarks/README.md and datasets/README.md. Rules (so that
the pages cannot drift from the code, while the test stays fast):

* every command (a line starting with a program such as ``.venv/bin/python``, ``bash``,
  ``apt-get``, after any ``NAME=value`` settings and ``nice -n N``) of a ```bash or plain ``` block
  is read, continuation lines joined; Python commands must use ``.venv/bin/python`` and no command
  uses ``sudo``;
* every Python program named (``train_net.py``, ``tools/*.py``, ``datasets/*.py``,
  ``-m module``) is run in-process with ``--help``; it must exit 0 and list every ``--flag`` the
  page passes to it (flags in ``[...]`` included);
* every ``bash`` script named exists;
* a command whose comment contains ``tiny:`` is run whole, in an empty folder;
* ``benchmarks/`` scripts (no flags; they time work) and other commands are not run.
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

DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md",
             REPO / "datasets" / "README.md"]
# Pages that must exist (a renamed page would otherwise leave the test with less to check).
REQUIRED_PAGES = ("README.md", "docs/getting_started.md", "docs/methods.md", "docs/datasets.md",
                  "docs/evaluation.md", "docs/deployment.md", "docs/reliability.md", "docs/config.md",
                  "benchmarks/README.md")
VENV_PYTHON = ".venv/bin/python"
TINY_MARK = "tiny:"
NOT_RUN = ("benchmarks/",)


# First words that make a code-block line a shell command (other lines are trees, config text).
COMMAND_WORDS = (VENV_PYTHON, "python", "python3", "bash", "pip", "apt-get", "sudo")
ENV_SETTING = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _from_program(words: List[str]) -> List[str]:
    """``words`` without leading ``NAME=value`` settings and ``nice [-n N]``."""
    while words and ENV_SETTING.match(words[0]):
        words = words[1:]
    if words[:1] == ["nice"]:
        words = words[3:] if words[1:2] == ["-n"] else words[1:]
    return words


def program_words(command: str) -> List[str]:
    """The words of ``command``'s last ``&&`` part (comments dropped) from the program on."""
    return _from_program(shlex.split(command.split(" && ")[-1], comments=True))


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
            words = _from_program(pending.split())
            if words and words[0] in COMMAND_WORDS:
                commands.append((pending.strip(), start))
            pending = ""
    return commands


def _python_program(command: str) -> List[str]:
    """``[script]`` or ``["-m", module]`` plus the arguments, for a ``.venv/bin/python`` command."""
    words = program_words(command)
    return words[1:] if words and words[0] == VENV_PYTHON else []


ALL = [(page, command, line) for page in DOC_PAGES for command, line in shell_commands(page)]
PYTHON = [(r, c, n) for r, c, n in ALL if _python_program(c) and not _python_program(c)[0].startswith(NOT_RUN)]


def _id(page: Path, line: int) -> str:
    return f"{page.relative_to(REPO)}:{line}"


def test_the_pages_exist_and_have_commands():
    assert all((REPO / page).is_file() for page in REQUIRED_PAGES)
    assert len(ALL) > 20 and len(PYTHON) > 15


@pytest.mark.parametrize("readme,command,line", ALL, ids=[_id(r, n) for r, _, n in ALL])
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


SCRIPTS = [(r, c, n) for r, c, n in ALL if program_words(c)[0] == "bash" and len(program_words(c)) > 1]


@pytest.mark.parametrize("readme,command,line", SCRIPTS, ids=[_id(r, n) for r, _, n in SCRIPTS])
def test_bash_scripts_exist(readme, command, line):
    script = program_words(command)[1]
    assert (REPO / script).is_file(), f"{readme.name}:{line}: no {script}"


@pytest.mark.parametrize("readme,command,line", PYTHON, ids=[_id(r, n) for r, _, n in PYTHON])
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


@pytest.mark.parametrize("readme,command,line", TINY, ids=[_id(r, n) for r, _, n in TINY])
def test_tiny_commands_run(readme, command, line, tmp_path):
    args = _python_program(command)
    if args[0] != "-m":
        args[0] = str(REPO / args[0])
    run = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, f"{readme.name}:{line}: {command}\n{run.stderr[-2000:]}"

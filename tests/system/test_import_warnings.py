"""Importing hkd_d2 (as every command does first) prints no deprecation warning of its dependencies."""
import os
import subprocess
import sys

from ..conftest import REPO


def test_import_prints_no_torch_jit_script_deprecation():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", "import hkd_d2"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch.jit.script" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr[-2000:]

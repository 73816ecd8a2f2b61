"""The package as a wheel, installed (not editable) and used from a folder outside the checkout."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ..conftest import REPO

# What a wheel is built from (copied, so the build leaves nothing in the checkout).
SOURCES = ("hkd_d2", "configs", "setup.cfg", "setup.py", "pyproject.toml", "README.md")

CHECK = textwrap.dedent("""
    import sys
    import hkd_d2
    from hkd_d2 import model_zoo
    from hkd_d2.modeling.teacher import load_teacher_config
    site = sys.argv[1]
    assert hkd_d2.__file__.startswith(site), hkd_d2.__file__
    cfg = model_zoo.get_config("synthetic/hkd_R50_to_R18.yaml")
    teacher = load_teacher_config(cfg)
    print(cfg.MODEL.TEACHER.CONFIG_FILE)
    print(teacher.MODEL.RESNETS.DEPTH, teacher.MODEL.ROI_BOX_HEAD.POOLER_NAME, len(model_zoo.list_configs()))
""")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding the wheel's install (``pip install --no-deps --target``)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        (shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
         if (REPO / name).is_dir() else shutil.copy(REPO / name, src / name))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((root / "dist").glob("hkd_d2-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return root / "site"


def test_installed_wheel_ships_configs_that_find_their_teacher(site, tmp_path):
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", CHECK, str(site)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    teacher_file, summary = run.stdout.split("\n")[:2]
    assert teacher_file == str((site / "hkd_d2" / "configs" / "synthetic" / "teacher_R50_FPN_PyRoIAlign.yaml").resolve())
    assert summary.split()[:2] == ["50", "PyRoIAlign"]
    assert int(summary.split()[2]) == len(list((REPO / "configs").glob("**/*.yaml")))


def test_installed_wheel_has_console_commands(site):
    commands = ("train", "eval", "export", "detect", "video", "demo", "ablation", "benchmark", "miss-rate", "synthetic",
                "crowdhuman-eval", "compress", "compress-report", "pretrain", "pooled", "curve")
    assert sorted(p.name for p in (site / "bin").iterdir()) == sorted(f"hkd-{c}" for c in commands)
    # each runs a function of hkd_d2.tools.cli (checked to exist in test_user_setup)
    assert "from hkd_d2.tools.cli import train" in (site / "bin" / "hkd-train").read_text()
    assert "from hkd_d2.tools.cli import evaluate" in (site / "bin" / "hkd-eval").read_text()

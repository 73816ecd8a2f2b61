"""hkd_d2's readers + evaluators against the numbers of the benchmarks' own evaluation code.

Golden folders (the shared reference files) and generated cases (tests/evaluation/cases.py, with
the official numbers in tests/evaluation/data/) go through the command lines and the Detectron2
evaluators; every metric must agree to 1e-6. Where the official code crashes, the expected
numbers are those of its smallest fix (see each data file's ``fixes``)."""
import json
import math
import subprocess
import sys
import tarfile

import pytest

from ..conftest import REPO
from .cases import (
    citypersons_case,
    crowdhuman_case,
    ecp_case,
    write_citypersons_case,
    write_crowdhuman_case,
    write_ecp_case,
)
from .official import check_citypersons, check_crowdhuman, check_ecp, digest, generated, mismatches


@pytest.fixture(scope="module")
def golden(reference_dir, tmp_path_factory):
    """Extract ``golden/<name>_cases.tar.gz``; returns the sorted case folders."""
    def extract(name):
        archive = reference_dir / "golden" / f"{name}_cases.tar.gz"
        if not archive.is_file():
            pytest.skip(f"golden cases {archive} not found")
        out = tmp_path_factory.mktemp(f"golden_{name}")
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
        return sorted(p for p in (out / name).iterdir() if p.is_dir())
    return extract


def test_golden_crowdhuman(golden, tmp_path):
    """All golden CrowdHuman cases: the command line on gt.odgt (where present) and
    gt_sized.odgt, the evaluator, the dump it writes; expected = the official numbers with the
    smallest crash fixes (E, M, N, J)."""
    cases = golden("crowdhuman")
    bad = {}
    for case in cases:
        expected = json.loads((case / "expected.json").read_text())["official_crash_fixes_EMNJ"]
        gt = case / "gt.odgt" if (case / "gt.odgt").is_file() else case / "gt_sized.odgt"
        out = tmp_path / case.name
        out.mkdir()
        found = check_crowdhuman(gt, case / "gt_sized.odgt", case / "dt.odgt", expected, out)
        if found:
            bad[case.name] = found
    assert len(cases) == 60 and bad == {}


def test_golden_ecp(golden):
    """All golden ECP cases, command line and evaluator: the official numbers (an empty setup
    without counted detections 1.0, as the script)."""
    cases = golden("ecp")
    bad = {}
    for case in cases:
        expected = json.loads((case / "expected.json").read_text())["official"]
        found = check_ecp(case / "labels", case / "dets", expected)
        if found:
            bad[case.name] = found
    assert len(cases) == 60 and bad == {}


def test_golden_command_lines_as_processes(golden):
    """``python -m hkd_d2.evaluation.miss_rate`` and ``python -m hkd_d2.tools crowdhuman-eval``
    (the console commands' targets) in their own processes, on the first golden case of each."""
    ecp, crowdhuman = golden("ecp")[0], golden("crowdhuman")[0]
    runs = {
        "ecp": ([sys.executable, "-m", "hkd_d2.evaluation.miss_rate", str(ecp / "labels"), str(ecp / "dets"),
                 "--protocol", "ecp", "--json"], ecp, "official"),
        "crowdhuman": ([sys.executable, "-m", "hkd_d2.tools", "crowdhuman-eval", str(crowdhuman / "gt_sized.odgt"),
                        str(crowdhuman / "dt.odgt"), "--json"], crowdhuman, "official_crash_fixes_EMNJ"),
    }
    for name, (command, case, key) in runs.items():
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr
        ours = {k: math.nan if v is None else v for k, v in json.loads(done.stdout).items()}
        assert mismatches(ours, json.loads((case / "expected.json").read_text())[key]) == {}, name


@pytest.mark.parametrize("row", generated("crowdhuman"))
def test_generated_crowdhuman(row, tmp_path):
    case = crowdhuman_case(row["seed"])
    assert digest(case) == row["digest"], "the generator changed: rebuild data/crowdhuman_generated.json"
    gt, gt_sized, dump = write_crowdhuman_case(case, tmp_path / "case")
    assert check_crowdhuman(gt, gt_sized, dump, row["expected"], tmp_path) == {}


@pytest.mark.parametrize("row", generated("ecp"))
def test_generated_ecp(row, tmp_path):
    case = ecp_case(row["seed"])
    assert digest(case) == row["digest"], "the generator changed: rebuild data/ecp_generated.json"
    labels, dets = write_ecp_case(case, tmp_path)
    assert check_ecp(labels, dets, row["expected"]) == {}


@pytest.mark.parametrize("row", generated("citypersons"))
def test_generated_citypersons(row, tmp_path):
    case = citypersons_case(row["seed"])
    assert digest(case) == row["digest"], "the generator changed: rebuild data/citypersons_generated.json"
    gt, dt = write_citypersons_case(case, tmp_path)
    assert check_citypersons(gt, dt, row["expected"]) == {}

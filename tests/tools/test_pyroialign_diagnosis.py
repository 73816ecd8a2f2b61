"""benchmarks/pyroialign_diagnosis.py: the level shares of a fusion weight, the refusal of other poolers."""
import importlib.util

import pytest
import torch
from torch import nn

from ..conftest import REPO


@pytest.fixture(scope="module")
def diagnosis():
    spec = importlib.util.spec_from_file_location("pyroialign_diagnosis", REPO / "benchmarks" / "pyroialign_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_level_shares_split_the_weight_norm_by_input_block(diagnosis):
    fuse = nn.Conv2d(4 * 2, 2, kernel_size=1)
    with torch.no_grad():
        fuse.weight.zero_()
        for level, norm in enumerate((1.0, 2.0, 3.0, 4.0)):
            fuse.weight[0, 2 * level, 0, 0] = norm
    assert diagnosis.level_shares(fuse, 4) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_a_folder_without_a_finished_run_is_named(diagnosis, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        diagnosis.load_run(tmp_path)

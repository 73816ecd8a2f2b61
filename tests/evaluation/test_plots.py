"""MR-FPPI plots."""
import numpy as np
import pytest
from matplotlib import image as mpimg

from hkd_d2.evaluation.miss_rate import MissRateCurve
from hkd_d2.evaluation.plots import plot_mr_fppi


def test_plot_several_detectors(tmp_path):
    fppi = np.logspace(-3, 1, 50)
    good = (fppi, np.clip(0.3 * fppi ** -0.2, 0, 1))
    curve = MissRateCurve(fppi, np.clip(0.6 * fppi ** -0.1, 0, 1), np.full(9, 0.7), 0.7)
    path = plot_mr_fppi({"good": good, "curve": curve, "none": (np.array([]), np.array([]))},
                        tmp_path / "sub" / "curves.png", title="test", dpi=50)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.shape[:2] == (250, 300)  # 6x5 inches at 50 dpi
    assert image[..., :3].std() > 0.05  # not blank
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp files left


def test_plot_rejects_mismatched_arrays(tmp_path):
    with pytest.raises(ValueError, match="one length"):
        plot_mr_fppi({"bad": ([0.1, 1.0], [0.5])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()

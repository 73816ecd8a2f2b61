"""Log-average miss rate (MR^-2) of pedestrian detectors, as the official tools compute it.

The protocol is Dollar et al.'s (Caltech toolbox ``dbEval.m`` / ``bbGt.m``), as also ported to
Python by the official CityPersons script ``eval_MR_multisetup.py``:

* every *setup* (e.g. "Reasonable") has a height range and a visibility range (inclusive; the
  height top is exclusive for Caltech);
  ground truth outside them becomes *ignore* (it is not removed);
* detections whose height lies outside ``[hmin / 1.25, hmax * 1.25)`` are dropped;
* per image, detections are matched greedily in (stable) score order at overlap >= 0.5,
  non-ignored ground truth preferred; the overlap with an ignored box is intersection over
  *detection* area, ignored boxes may absorb many detections, and a detection matched to one
  leaves the curve;
* FPPI is counted over all images; recall is sampled at the 9 reference FPPI points
  ``10^(-2:0.25:0)`` and ``MR = exp(mean(log(miss)))``.

The Caltech protocol follows ``dbEval.m`` exactly: it keeps the labels ``person`` and, as ignore
regions, ``person?``, ``people`` and ``ignore`` (others are removed), ignores boxes outside the
``[5 5 635 475]`` border, standardises non-ignored ground truth and all detections to width
``0.41 * h`` about their centre, excludes the top of each height range (``h < hr(2)``), gives a
box without a visible box visibility ``inf`` and one with a visible box its area ratio
(``posv == pos``: 1), does not clamp (MR 0 where a miss rate reaches 0) and gives MR 1.0 to a
setup without counted detections. The ECP protocol follows the ECP evaluation script
(:data:`.protocols.ECP`), its overlaps and heights computed on the files' corners ``x0 y0 x1 y1``
clipped to the frame, as the script does (a detection with x1 < x0 after clipping, on which the
script stops with an AssertionError, overlaps nothing).

Differences of the ``citypersons`` protocol from the official Python script (its bugs; the MATLAB
toolbox is followed instead):

* a reference FPPI below the first false positive samples recall 0 (the script reads
  ``recall[-1]``, the curve's *end*, when the top-scoring detections are false positives);
* a detection matched to a ground-truth box whose annotation id is 0 counts as a true positive
  (the script stores ids as match flags, so id 0 reads as "unmatched");
* no detections at all gives MR 1.0 (no crash);
* a miss rate of 0 at a reference point is clamped to 1e-10 before the log, as the toolbox's
  ``acfTest.m`` does (``exp(mean(log(max(1e-10, 1 - recall))))``); the script's ``log(0)`` would
  make MR 0 (as ``dbEval.m``'s unclamped ``exp(mean(log(score)))`` does).

Modules: :mod:`.protocols` (the protocol tables), :mod:`.inputs` (reading and validation),
:mod:`.matching` (the core), :mod:`.cli` (``python -m hkd_d2.evaluation.miss_rate GT DT``).
"""
from .inputs import Detections, GroundTruth, MissRateInputError, load_detections, load_ground_truth
from .matching import MissRateCurve, evaluate_miss_rate, evaluate_setup, log_average_miss_rate, miss_rate_curves
from .protocols import (
    CITYPERSONS_FPPI_REFS,
    INF,
    MIN_MISS_RATE,
    PERSON_CATEGORY_NAMES,
    PROTOCOLS,
    TOOLBOX_FPPI_REFS,
    Protocol,
    Setup,
    get_protocol,
)

__all__ = [
    "PERSON_CATEGORY_NAMES",
    "INF",
    "MIN_MISS_RATE",
    "TOOLBOX_FPPI_REFS",
    "CITYPERSONS_FPPI_REFS",
    "Setup",
    "Protocol",
    "PROTOCOLS",
    "MissRateInputError",
    "GroundTruth",
    "Detections",
    "MissRateCurve",
    "get_protocol",
    "load_ground_truth",
    "load_detections",
    "evaluate_setup",
    "miss_rate_curves",
    "evaluate_miss_rate",
    "log_average_miss_rate",
]

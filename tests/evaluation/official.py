"""Running a case of the official-code data (golden folders, generated cases) through hkd_d2:
the command lines in process, and the Detectron2 evaluators on records read from the files."""
import contextlib
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from hkd_d2.data.crowdhuman import load_crowdhuman, read_json_lines
from hkd_d2.data.ecp import load_ecp, read_ecp_detections
from hkd_d2.tools import crowdhuman_eval as crowdhuman_cli
from hkd_d2.evaluation.evaluator import CROWDHUMAN_DETECTIONS_FILE, CrowdHumanEvaluator, MissRateEvaluator
from hkd_d2.evaluation.miss_rate import cli as miss_rate_cli

DATA = Path(__file__).parent / "data"
TOLERANCE = 1e-6


def generated(benchmark: str) -> List:
    """pytest params of ``data/<benchmark>_generated.json``: the ``ci`` cases run always, the
    others are ``slow``."""
    rows = json.loads((DATA / f"{benchmark}_generated.json").read_text())["cases"]
    return [pytest.param(r, id=str(r["seed"]), marks=() if r["ci"] else pytest.mark.slow) for r in rows]


def digest(case: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(case, sort_keys=True).encode()).hexdigest()


def mismatches(ours: Mapping[str, float], expected: Mapping[str, Any]) -> Dict[str, Any]:
    """{metric: (ours, expected)} of the metrics further apart than TOLERANCE ("nan" = NaN)."""
    bad = {}
    for key, want in expected.items():
        got = ours[key]
        ok = math.isnan(got) if want == "nan" else isinstance(want, float) and abs(got - want) <= TOLERANCE
        if not ok:
            bad[key] = (got, want)
    return bad


def _run_cli(main, argv: List[str]) -> Dict[str, float]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return {k: math.nan if v is None else v for k, v in json.loads(out.getvalue()).items()}


def _outputs(image_size, xyxy: np.ndarray, scores: np.ndarray) -> Dict[str, Instances]:
    """Model outputs holding the boxes in float64, as given (Boxes would round them to float32)."""
    inst = Instances(image_size)
    boxes = Boxes(torch.zeros(0, 4))
    boxes.tensor = torch.as_tensor(xyxy, dtype=torch.float64).reshape(-1, 4)
    inst.pred_boxes = boxes
    inst.scores = torch.as_tensor(scores, dtype=torch.float64)
    return {"instances": inst}


@contextlib.contextmanager
def registered(name: str, records: List[Dict], **metadata):
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"], **metadata)
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# --- CrowdHuman ---------------------------------------------------------------------------------

def crowdhuman_cli_metrics(gt: Path, dump: Path) -> Dict[str, float]:
    return _run_cli(crowdhuman_cli.main, [str(gt), str(dump), "--json"])


def crowdhuman_evaluator_metrics(gt_sized: Path, dump: Path, output_dir: Optional[Path] = None) -> Dict[str, float]:
    """CrowdHumanEvaluator on the records of ``gt_sized`` and the dump's detections as outputs
    (XYXY = ``x + w``, as the scripts add them); images missing from the dump are not processed."""
    records = load_crowdhuman(gt_sized, gt_sized.parent / "Images")
    dets = {e["ID"]: e for _, e in read_json_lines(dump)}
    with registered(f"official_crowdhuman_{digest({'p': str(dump)})[:12]}", records, evaluator_type="crowdhuman") as name:
        evaluator = CrowdHumanEvaluator(name, str(output_dir) if output_dir else None)
        evaluator.reset()
        for record in records:
            entry = dets.get(record["crowdhuman_id"])
            if entry is None:
                continue
            xyxy = np.asarray([d["box"] for d in entry["dtboxes"]], np.float64).reshape(-1, 4)
            xyxy[:, 2:] += xyxy[:, :2]
            scores = np.asarray([d["score"] for d in entry["dtboxes"]], np.float64)
            evaluator.process([{"image_id": record["image_id"]}],
                              [_outputs((record["height"], record["width"]), xyxy, scores)])
        result = evaluator.evaluate()["crowdhuman"]
    return {k: v / 100 for k, v in result.items()}


def check_crowdhuman(gt: Path, gt_sized: Path, dump: Path, expected: Mapping[str, Any], tmp: Path) -> Dict[str, Any]:
    """Mismatches of the command line (on ``gt`` and on ``gt_sized``), the evaluator, and the
    command line on the dump the evaluator wrote."""
    bad = {}
    for label, ours in (("cli", crowdhuman_cli_metrics(gt, dump)),
                        ("cli_sized", crowdhuman_cli_metrics(gt_sized, dump)),
                        ("evaluator", crowdhuman_evaluator_metrics(gt_sized, dump, tmp)),
                        ("written_dump", crowdhuman_cli_metrics(gt_sized, tmp / CROWDHUMAN_DETECTIONS_FILE))):
        bad.update({f"{label}:{k}": v for k, v in mismatches(ours, expected).items()})
    return bad


# --- ECP ----------------------------------------------------------------------------------------

def ecp_cli_mr(labels: Path, dets: Path) -> Dict[str, float]:
    return _run_cli(miss_rate_cli.main, [str(labels), str(dets), "--protocol", "ecp", "--json"])


def ecp_evaluator_mr(labels: Path, dets: Path) -> Dict[str, float]:
    """MissRateEvaluator (protocol ecp) on the records of ``labels`` and the detection files'
    pedestrians as outputs (their corners as given)."""
    records = load_ecp(labels, labels.parent / "img")
    with registered(f"official_ecp_{digest({'p': str(labels)})[:12]}", records, evaluator_type="miss_rate",
                    protocol="ecp") as name:
        evaluator = MissRateEvaluator(name, None, plot=False)
        evaluator.reset()
        for record in records:
            results = read_ecp_detections(dets / Path(record["file_name"]).with_suffix(".json").name, record["image_id"])
            xyxy = np.asarray([r["corners"] for r in results], np.float64).reshape(-1, 4)
            scores = np.asarray([r["score"] for r in results], np.float64)
            evaluator.process([{"image_id": record["image_id"]}],
                              [_outputs((record["height"], record["width"]), xyxy, scores)])
        result = evaluator.evaluate()["MR"]
    return {k: v / 100 for k, v in result.items()}


def check_ecp(labels: Path, dets: Path, expected: Mapping[str, Any]) -> Dict[str, Any]:
    bad = {}
    for label, ours in (("cli", ecp_cli_mr(labels, dets)), ("evaluator", ecp_evaluator_mr(labels, dets))):
        bad.update({f"{label}:{k}": v for k, v in mismatches(ours, expected).items()})
    return bad


# --- CityPersons --------------------------------------------------------------------------------

CITYPERSONS_SETUPS = ("Reasonable", "Reasonable_small", "Reasonable_occ=heavy", "All")


def check_citypersons(gt: Path, dt: Path, expected: Mapping[str, Any]) -> Dict[str, Any]:
    ours = _run_cli(miss_rate_cli.main, [str(gt), str(dt), "--json", "--setups", *CITYPERSONS_SETUPS])
    return mismatches(ours, expected)

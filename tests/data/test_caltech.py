"""Caltech: .seq decoding/writing, .vbb structure, new annotations, splits, prepare, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from hkd_d2.data.caltech import (
    CALTECH_SPLITS,
    SeqFile,
    VbbObject,
    caltech_annotation,
    prepare_caltech,
    read_bbgt,
    read_vbb,
    split_frames,
    write_seq,
    write_vbb,
)
from hkd_d2.data.pedestrian_json import PedestrianDataError, load_pedestrian_json
from ..conftest import REFERENCE

PEDS30 = REFERENCE / "caltech" / "peds30.seq"


def test_peds30_decodes_and_rewrites_same_layout(tmp_path):
    if not PEDS30.is_file():
        pytest.skip(f"reference file {PEDS30} not present")
    seq = SeqFile(PEDS30)
    assert len(seq) == 30 and (seq.width, seq.height) == (640, 480)
    frames = list(seq)
    assert len(frames) == 30 and all(f.shape == (480, 640, 3) for f in frames)
    write_seq(tmp_path / "copy.seq", [seq.frame_bytes(i) for i in range(30)], fps=seq.fps)
    copy, real = (tmp_path / "copy.seq").read_bytes(), PEDS30.read_bytes()
    assert copy[:1024] == real[:1024] and len(copy) == len(real)  # same header and frame layout
    assert [SeqFile(tmp_path / "copy.seq").frame_bytes(i) == seq.frame_bytes(i) for i in range(30)] == [True] * 30


def test_truncated_seq_names_file(tmp_path):
    frames = [np.full((16, 24, 3), 40 * i, np.uint8) for i in range(3)]
    write_seq(tmp_path / "V000.seq", frames)
    data = (tmp_path / "V000.seq").read_bytes()
    (tmp_path / "cut.seq").write_bytes(data[: len(data) - 40])
    with pytest.raises(PedestrianDataError, match="cut.seq.*truncated"):
        SeqFile(tmp_path / "cut.seq")
    (tmp_path / "junk.seq").write_bytes(b"x" * 2000)
    with pytest.raises(PedestrianDataError, match="junk.seq"):
        SeqFile(tmp_path / "junk.seq")


def _vbb_frames():
    return [
        [VbbObject("person", (10.5, 20, 30, 73)), VbbObject("people", (100, 20, 50, 70), (100, 20, 50, 35), 1)],
        [],
        [VbbObject("person?", (1, 2, 3, 4)), VbbObject("person-fa", (5, 6, 7, 8)),
         VbbObject("person", (40, 40, 20, 50), (40, 40, 20, 50), 1)],
    ]


def test_vbb_real_structure_round_trip(tmp_path):
    write_vbb(tmp_path / "V000.vbb", _vbb_frames())
    A = scipy.io.loadmat(tmp_path / "V000.vbb")["A"][0, 0]
    assert A.dtype.names == ("nFrame", "objLists", "maxObj", "objInit", "objLbl", "objStr", "objEnd",
                             "objHide", "altered", "log", "logLen")
    assert A["nFrame"][0, 0] == 3 and A["maxObj"][0, 0] == 5
    assert A["objLists"][0, 0].dtype.names == ("id", "pos", "posv", "occl", "lock")
    assert [str(v[0]) for v in A["objLbl"][0]] == ["person", "people", "person?", "person-fa", "person"]
    back = read_vbb(tmp_path / "V000.vbb")
    assert [[(o.label, o.pos, o.posv, o.occl) for o in f] for f in back] == \
        [[(o.label, tuple(map(float, o.pos)), tuple(map(float, o.posv)), o.occl) for o in f] for f in _vbb_frames()]


def test_labels_and_visibility_rules():
    person, people, full_occ = (caltech_annotation(o) for o in (_vbb_frames()[0] + [_vbb_frames()[2][2]]))
    assert person["ignore"] == 0 and person["vis_bbox"] == person["bbox"] and person["vis_ratio"] == 1.0
    assert people["ignore"] == 1 and people["label"] == "people"
    assert people["vis_bbox"] == [100, 20, 50, 35] and people["vis_ratio"] == 0.5
    assert full_occ["vis_ratio"] == 0.0


def test_vbb_bad_input(tmp_path):
    scipy.io.savemat(tmp_path / "x.vbb", {"B": np.zeros(2)})
    with pytest.raises(PedestrianDataError, match="x.vbb"):
        read_vbb(tmp_path / "x.vbb")


def test_new_annotations_bbgt(tmp_path):
    path = tmp_path / "set06_V000_I00029.txt"
    path.write_text("% bbGt version=3\nperson 10 20 30 60 1 10 20 30 30 0 0\nperson 1 1 5 10 0 0 0 0 0 1 0\n"
                    "people 50 20 40 60 0 0 0 0 0 0 0\n")
    a, b, c = read_bbgt(path)
    assert a["bbox"] == [10, 20, 30, 60] and a["vis_bbox"] == [10, 20, 30, 30] and a["vis_ratio"] == 0.5
    assert (a["ignore"], b["ignore"], c["ignore"]) == (0, 1, 1)
    (tmp_path / "bad.txt").write_text("person 1 2 3\n")
    with pytest.raises(PedestrianDataError, match="bad.txt"):
        read_bbgt(tmp_path / "bad.txt")


def test_split_frames():
    assert list(split_frames(60, CALTECH_SPLITS["test"].step)) == [29, 59]
    assert list(split_frames(10, CALTECH_SPLITS["train_10x"].step)) == [2, 5, 8]
    assert CALTECH_SPLITS["train_1x"].sets == tuple(f"set0{i}" for i in range(6))
    assert CALTECH_SPLITS["test"].sets == ("set06", "set07", "set08", "set09", "set10")


def test_prepare_test_split_and_new_annotations(tmp_path):
    root = tmp_path / "caltech"
    frames = [np.full((12, 16, 3), i, np.uint8) for i in range(60)]
    objs = [[VbbObject("person", (1, 1, 4, 10 + i))] for i in range(60)]
    write_seq(root / "set06" / "V000.seq", frames)
    write_vbb(root / "annotations" / "set06" / "V000.vbb", objs)
    json_file = prepare_caltech(root, "test", tmp_path / "out")
    recs = load_pedestrian_json(json_file, tmp_path / "out" / "images")
    assert [Path(r["file_name"]).name for r in recs] == ["set06_V000_I00029.jpg", "set06_V000_I00059.jpg"]
    assert [r["annotations"][0]["bbox"][3] for r in recs] == [39, 69]
    new = tmp_path / "new"
    new.mkdir()
    (new / "set06_V000_I00059.jpg.txt").write_text("% bbGt version=3\nperson 2 2 4 8 0 0 0 0 0 0 0\n")
    new_json = prepare_caltech(root, "test", tmp_path / "out", new_annotations=new)
    assert new_json.name == "test_new.json"
    (rec,) = json.loads(new_json.read_text())["annotations"]
    assert rec["bbox"] == [2, 2, 4, 8]

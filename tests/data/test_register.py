"""Registration: one call per source kind, lazy built-in names, synthetic generated on first use."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import hkd_d2.data.register as register
from hkd_d2.data import register_pedestrian_dataset
from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic

BUILTIN = ["caltech_train_10x", "caltech_train_1x", "caltech_test", "caltech_test_new", "citypersons_train",
           "citypersons_val", "synthetic_citypersons_train", "synthetic_citypersons_val",
           "synthetic_caltech_train", "synthetic_caltech_test"]


def test_builtins_registered_with_metadata():
    for name in BUILTIN:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["person"] and meta.evaluator_type == "miss_rate"
        assert meta.protocol == ("caltech" if "caltech" in name else "citypersons")


def test_missing_builtin_names_path_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"caltech/prepared/test.json.*prepare_caltech.py"):
        DatasetCatalog.get("caltech_test")
    with pytest.raises(FileNotFoundError, match=r"citypersons/annotations/anno_val.mat"):
        DatasetCatalog.get("citypersons_val")


def test_synthetic_generated_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setitem(register.SYNTHETIC_DEFAULTS, "num_train", 3)
    monkeypatch.setitem(register.SYNTHETIC_DEFAULTS, "num_val", 2)
    monkeypatch.setitem(register.SYNTHETIC_DEFAULTS, "width", 64)
    monkeypatch.setitem(register.SYNTHETIC_DEFAULTS, "height", 48)
    recs = DatasetCatalog.get("synthetic_caltech_test")
    assert len(recs) == 2 and (recs[0]["height"], recs[0]["width"]) == (48, 64)
    assert len(DatasetCatalog.get("synthetic_citypersons_train")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
    ann = next(a for r in recs for a in r["annotations"])
    assert set(ann) == {"bbox", "bbox_mode", "category_id", "vis_bbox", "vis_ratio", "ignore", "label"}


def test_register_each_source_kind(tmp_path):
    out = tmp_path / "syn"
    generate_synthetic(out, 2, 2, SyntheticConfig(width=64, height=48, frames_per_video=2), workers=0)
    cp = out / "citypersons"
    register_pedestrian_dataset("t_cp_mat", cp / "annotations" / "anno_val.mat", image_root=cp / "leftImg8bit" / "val")
    register_pedestrian_dataset("t_cp_json", cp / "ground_truth_val.json", protocol="citypersons",
                                image_root=cp / "leftImg8bit" / "val")
    register_pedestrian_dataset("t_cal", out / "caltech", image_root=tmp_path / "prep", split="test", step=1)
    try:
        assert DatasetCatalog.get("t_cp_mat") == DatasetCatalog.get("t_cp_json")
        assert MetadataCatalog.get("t_cp_json").json_file.endswith("ground_truth_val.json")
        assert len(DatasetCatalog.get("t_cal")) == 2 and MetadataCatalog.get("t_cal").protocol == "caltech"
    finally:
        for name in ("t_cp_mat", "t_cp_json", "t_cal"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    with pytest.raises(ValueError, match="protocol"):
        register_pedestrian_dataset("t_bad", cp / "ground_truth_val.json", image_root=cp)


def test_multiclass_names_read_riders_and_sitting_people_as_classes(tmp_path, monkeypatch):
    for name in ("citypersons_multiclass_train", "synthetic_citypersons_multiclass_val"):
        assert MetadataCatalog.get(name).thing_classes == ["pedestrian", "rider", "sitting person"]
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    for key, value in (("num_train", 2), ("num_val", 12), ("width", 96), ("height", 64)):
        monkeypatch.setitem(register.SYNTHETIC_DEFAULTS, key, value)
    plain = DatasetCatalog.get("synthetic_citypersons_val")
    several = DatasetCatalog.get("synthetic_citypersons_multiclass_val")
    pairs = [(a, b) for r, s in zip(plain, several) for a, b in zip(r["annotations"], s["annotations"])]
    riders = [b for a, b in pairs if a["label"] == "rider"]
    assert riders and all(b["category_id"] == 1 and b["ignore"] == 0 for b in riders)
    assert all(a == b for a, b in pairs if a["label"] not in ("rider", "sitting person"))


def test_classes_only_for_citypersons_files(tmp_path):
    with pytest.raises(ValueError, match="classes= is for CityPersons .mat sources"):
        register_pedestrian_dataset("t_json_classes", tmp_path / "x.json", protocol="citypersons", image_root=tmp_path,
                                    classes=("pedestrian", "rider"))
    assert "t_json_classes" not in DatasetCatalog.list()

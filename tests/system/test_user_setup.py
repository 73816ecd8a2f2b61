"""The add-on as a Detectron2 user meets it: log lines, resolved paths, own data, file modes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

from hkd_d2 import model_zoo
from hkd_d2.atomic import atomic_output
from hkd_d2.data.pedestrian_json import PedestrianDataError, load_pedestrian_json
from hkd_d2.data.register import register_config_datasets
from hkd_d2.data.synthetic import SyntheticConfig, generate_synthetic
from hkd_d2.engine import Trainer, load_config, resolve_device
from hkd_d2.engine.evaluate import build_test_model
from hkd_d2.evaluation import MissRateEvaluator, build_evaluator
from hkd_d2.evaluation.miss_rate import load_ground_truth
from hkd_d2.tools import cli
from hkd_d2.tools.detect import detect_images, expand_inputs

from ..conftest import REPO
from ..tools.test_train_net import TINY

HKD = model_zoo.get_config_file("synthetic/hkd_R50_to_R18.yaml")


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _image(folder: Path, name: str = "a.png", hw=(48, 64)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*hw, 3), np.uint8)).save(folder / name)
    return folder / name


def _coco(categories, annotations):
    return {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
            "annotations": [{"id": i + 1, "image_id": 1, "bbox": [5, 5, 10, 30], **a} for i, a in enumerate(annotations)],
            "categories": categories}


# ---------------------------------------------------------------- 1, 6, 8: --eval-only as a user runs it
@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic(root / "synthetic", 4, 2, SyntheticConfig(width=128, height=96, seed=1),
                       formats=("citypersons",), workers=0)
    return root


def test_eval_only_of_an_hkd_run_logs_the_mr_table_builds_no_teacher_and_writes_0644(datasets, tmp_path):
    # An HKD checkpoint: the student's weights plus a distillation-only adapter.
    cfg = load_config(HKD, TINY + ["MODEL.DEVICE", "cpu"])
    state = dict(build_test_model(cfg).state_dict(), **{"distill_terms.0.adapters.p2.weight": torch.zeros(1)})
    weights = tmp_path / "model_final.pth"
    torch.save({"model": state}, weights)
    out = tmp_path / "eval"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), PYTHONPATH=str(REPO))
    # From a folder without the teacher's weights (the config's relative WEIGHTS are not there).
    run = subprocess.run(
        [sys.executable, "-m", "hkd_d2.tools.train", "--config-file", HKD, "--eval-only", *TINY,
         "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Miss rate (%) on synthetic_citypersons_val" in log and "Reasonable" in log
    assert "Teacher" not in log
    detections = out / "inference" / "synthetic_citypersons_val" / "miss_rate_detections.json"
    assert detections.stat().st_mode & 0o777 == 0o644


def test_atomic_output_gives_files_and_folders_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with atomic_output(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "x").write_text("")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


# ---------------------------------------------------------------- 2: teacher paths
def test_teacher_paths_are_relative_to_the_config_file_that_names_them(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    (configs / "rows").mkdir(parents=True)
    (configs / "teacher.yaml").write_text("MODEL:\n  META_ARCHITECTURE: GeneralizedRCNN\n")
    (configs / "rows" / "t.pth").write_bytes(b"")
    (configs / "base.yaml").write_text('MODEL:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n    WEIGHTS: "out/t.pth"\n')
    (configs / "rows" / "row.yaml").write_text('_BASE_: "../base.yaml"\nMODEL:\n  TEACHER:\n    WEIGHTS: "t.pth"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(configs / "rows" / "row.yaml"))
    assert cfg.MODEL.TEACHER.CONFIG_FILE == str(configs / "teacher.yaml")  # named by base.yaml
    assert cfg.MODEL.TEACHER.WEIGHTS == str(configs / "rows" / "t.pth")  # named by row.yaml
    # not next to the naming file: left for the current directory; command-line values as given
    assert load_config(str(configs / "base.yaml")).MODEL.TEACHER.WEIGHTS == "out/t.pth"
    assert load_config(str(configs / "rows" / "row.yaml"), ["MODEL.TEACHER.WEIGHTS", "t.pth"]).MODEL.TEACHER.WEIGHTS == "t.pth"


def test_shipped_configs_by_name_find_their_teacher():
    cfg = model_zoo.get_config("synthetic/table3/t3_8_pd_rd_ld_pyroialign.yaml")
    assert cfg.MODEL.TEACHER.CONFIG_FILE == model_zoo.get_config_file("synthetic/teacher_R50_FPN_PyRoIAlign.yaml")
    assert model_zoo.get_config("caltech/literature/pkd.yaml").MODEL.TEACHER.CONFIG_FILE == \
        model_zoo.get_config_file("caltech/teacher_R50_FPN.yaml")
    assert "caltech/hkd_R50_to_R18.yaml" in model_zoo.list_configs()
    with pytest.raises(FileNotFoundError, match="closest: \\['caltech/hkd_R50_to_R18.yaml'"):
        model_zoo.get_config_file("caltech/hkd_R50_R18.yaml")


# ---------------------------------------------------------------- 3: CPU fallback in the library
def test_trainer_builds_a_cuda_config_on_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = model_zoo.get_config("synthetic/student_R18_FPN.yaml", TINY + ["MODEL.DEVICE", "cuda"])
    cfg.freeze()
    resolved = resolve_device(cfg)
    assert resolved.MODEL.DEVICE == "cpu" and resolved.is_frozen() and cfg.MODEL.DEVICE == "cuda"
    assert next(Trainer.build_model(cfg).parameters()).device.type == "cpu"


# ---------------------------------------------------------------- 4: own data
def test_categories_are_kept_by_name_or_id_and_others_only_as_ignore(tmp_path):
    _image(tmp_path)
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    data = _coco(categories, [{"category_id": 1}, {"category_id": 3}, {"category_id": 3, "ignore": 1}])
    path = _write_json(tmp_path / "mixed.json", data)
    records = load_pedestrian_json(path, tmp_path)
    assert [a["ignore"] for a in records[0]["annotations"]] == [0, 1]  # the car is gone, the ignore box stays
    by_id = load_pedestrian_json(path, tmp_path, categories=[3])
    assert [a["ignore"] for a in by_id[0]["annotations"]] == [0, 1]  # now the cars are the pedestrians
    only_cars = _write_json(tmp_path / "cars.json", _coco(categories[1:], [{"category_id": 3}]))
    with pytest.raises(PedestrianDataError, match="cars.json: no category is a pedestrian.*'car'"):
        load_pedestrian_json(only_cars, tmp_path)


def test_iscrowd_is_ignore_in_training_records_and_in_the_standalone_reader(tmp_path):
    _image(tmp_path)
    path = _write_json(tmp_path / "crowd.json", _coco([{"id": 1, "name": "person"}], [{"iscrowd": 0}, {"iscrowd": 1}]))
    records = load_pedestrian_json(path, tmp_path)
    assert [a["ignore"] for a in records[0]["annotations"]] == [0, 1]
    assert load_ground_truth(path, "citypersons").ignore.tolist() == [False, True]


# ---------------------------------------------------------------- 5: naming data sets
def test_json_data_sets_named_in_the_config_are_registered(tmp_path):
    _image(tmp_path / "imgs")
    json_file = _write_json(tmp_path / "imgs" / "train.json", _coco([{"id": 1, "name": "person"}], [{}]))
    cfg = load_config(HKD, ["DATASETS.PEDESTRIAN_JSON.FILES", f"('h17_mine={json_file}',)",
                            "DATASETS.PEDESTRIAN_JSON.PROTOCOL", "caltech"])
    assert register_config_datasets(cfg) == ["h17_mine"]
    assert register_config_datasets(cfg) == ["h17_mine"]  # twice is harmless
    assert len(DatasetCatalog.get("h17_mine")[0]["annotations"]) == 1  # images next to the JSON
    assert MetadataCatalog.get("h17_mine").protocol == "caltech"
    cfg.DATASETS.PEDESTRIAN_JSON.FILES = ["h17_bad"]
    with pytest.raises(ValueError, match="entry 'h17_bad': expected 'NAME=path/to/file.json'"):
        register_config_datasets(cfg)


def test_coco_person_data_gets_the_miss_rate_evaluator(tmp_path):
    _image(tmp_path)
    person = _write_json(tmp_path / "p.json", _coco([{"id": 1, "name": "person"}], [{"category_id": 1, "area": 300, "iscrowd": 0}]))
    register_coco_instances("h17_coco_person", {}, str(person), str(tmp_path))
    cfg = load_config(HKD)
    assert isinstance(build_evaluator(cfg, "h17_coco_person"), MissRateEvaluator)
    assert MetadataCatalog.get("h17_coco_person").protocol == "citypersons"
    two = _write_json(tmp_path / "two.json", _coco([{"id": 1, "name": "person"}, {"id": 2, "name": "car"}], []))
    register_coco_instances("h17_coco_two", {}, str(two), str(tmp_path))
    DatasetCatalog.get("h17_coco_two")  # sets thing_classes
    with pytest.raises(ValueError, match=r"classes \['person', 'car'\].*COCOEvaluator"):
        build_evaluator(cfg, "h17_coco_two")


# ---------------------------------------------------------------- 9, 10: commands
def test_every_console_command_names_a_function():
    for command in cli.COMMANDS:
        assert callable(cli._function(command)), command
    assert cli.main(["nope"]) == 2


def test_detect_expands_inputs_and_writes_drawn_images(tmp_path):
    from detectron2.structures import Boxes, Instances

    first, second = _image(tmp_path / "in", "a.png"), _image(tmp_path / "in", "b.jpg")
    (tmp_path / "in" / "notes.txt").write_text("")
    assert expand_inputs([str(tmp_path / "in")]) == [first, second]
    assert expand_inputs([str(tmp_path / "in" / "*.png"), str(first)]) == [first]
    with pytest.raises(FileNotFoundError, match="--input .*nothing.*no image or video"):
        expand_inputs([str(tmp_path / "nothing")])

    def predictor(image):
        instances = Instances(image.shape[:2], pred_boxes=Boxes(torch.tensor([[5.0, 5, 20, 40], [1, 1, 4, 4]])),
                              scores=torch.tensor([0.9, 0.2]), pred_classes=torch.zeros(2, dtype=torch.long))
        return {"instances": instances}

    summaries = detect_images(predictor, [first, second], str(tmp_path / "out"), score_threshold=0.5)
    assert [s["detections"] for s in summaries] == [1, 1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]
    assert (tmp_path / "out" / "a.png").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- 12: a Caltech root too short for its split
def test_preparing_caltech_videos_shorter_than_the_step_says_to_pass_step(tmp_path):
    from hkd_d2.data.caltech import prepare_caltech

    generate_synthetic(tmp_path / "synthetic", 2, 3, SyntheticConfig(width=128, height=96, seed=1),
                       formats=("caltech",), workers=0)
    with pytest.raises(PedestrianDataError, match="no frame kept.*--step 1"):
        prepare_caltech(tmp_path / "synthetic" / "caltech", "test", tmp_path / "prepared")
    assert not (tmp_path / "prepared" / "test.json").exists()
    json_file = prepare_caltech(tmp_path / "synthetic" / "caltech", "test", tmp_path / "prepared", step=1)
    assert len(json.loads(Path(json_file).read_text())["images"]) == 3

"""SRM stage 1 as a command: the file it writes is what a training with DICTIONARY_FILE loads."""
import pytest
import torch

from hkd_d2.engine import Trainer
from hkd_d2.tools.srm_dictionary import main

from ..conftest import CONFIGS
from ..hkd_helpers import register_tiny_citypersons, trainer_cfg, write_teacher

SRM = CONFIGS / "synthetic" / "literature" / "srm.yaml"


def test_dictionary_file_written_then_loaded_by_a_training(tmp_path):
    train = register_tiny_citypersons(tmp_path / "d", "srm_dictionary_tiny_train")
    teacher = write_teacher(tmp_path)
    cfg = trainer_cfg(SRM, teacher, train, tmp_path / "out")
    config_file = tmp_path / "srm.yaml"
    config_file.write_text(cfg.dump())
    out = tmp_path / "srm_dictionary.pth"
    main(["--config-file", str(config_file), "--out", str(out), "--iters", "3"])
    written = torch.load(out, weights_only=True)
    assert sorted(written["levels"]) == ["p3", "p4", "p5", "p6"]
    assert written["teacher_weights"] == teacher["MODEL.TEACHER.WEIGHTS"]
    cfg.defrost()
    cfg.MODEL.DISTILL.SRM.DICTIONARY_FILE = str(out)
    cfg.MODEL.DISTILL.SRM.DICTIONARY_ITERS = 0
    cfg.SOLVER.MAX_ITER = 1
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    codebook = trainer.model.distill_terms[0].codebook
    assert bool(codebook.ready)
    assert torch.equal(codebook.coders["p5"].dictionary, written["levels"]["p5"]["dictionary"])
    with pytest.raises(ValueError, match="--iters .* must be > 0"):
        main(["--config-file", str(config_file), "--out", str(out), "--iters", "0"])

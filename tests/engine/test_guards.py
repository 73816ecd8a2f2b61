"""Run hygiene: the runaway-distillation guard, the OUTPUT_DIR lock, resume config checks, signals."""
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from hkd_d2.config import add_hkd_config
from hkd_d2.engine.guards import RunawayDistillationError, RunawayDistillationGuard, build_runaway_guard, find_runaway
from hkd_d2.engine.interrupt import StopOnSignal, TrainingInterrupted
from hkd_d2.engine.lock import LOCK_FILE, OutputDirBusyError, OutputDirLock
from hkd_d2.engine.resume import config_changes, describe_config_changes
from hkd_d2.modeling import StepLosses

DETECTION = {"loss_rpn_cls": 0.5, "loss_rpn_loc": 0.2, "loss_cls": 0.2, "loss_box_reg": 0.1}  # sums to 1


def test_find_runaway_names_the_worst_term_over_the_ratio():
    assert find_runaway(DETECTION, {"loss_pd": 999.0, "loss_rd": 5.0}, 1000.0) is None
    name, value, ratio = find_runaway(DETECTION, {"loss_pd": 2000.0, "loss_rd": 3000.0}, 1000.0)
    assert (name, value) == ("loss_rd", 3000.0) and ratio == pytest.approx(3000.0)
    assert find_runaway({}, {"loss_pd": 1e30}, 10.0) is None  # nothing to compare with


def _step(losses):
    """The distiller's record of a step whose losses are ``losses`` (a DETECTION key is detection)."""
    split = {origin: {k: torch.tensor(v) for k, v in losses.items() if (k in DETECTION) == (origin == "detection")}
             for origin in ("detection", "distillation")}
    return StepLosses(split["detection"], split["distillation"], {}, {}, {})


def _run_guard(guard, per_iteration, checkpointer=None):
    """Feed ``per_iteration`` loss dicts through ``guard`` as a trainer would (with ``checkpointer``:
    saving every iteration after the guard, as the periodic checkpointer does); return iterations done."""
    done = []
    model = SimpleNamespace(last_losses=None)
    with EventStorage(0) as storage:
        guard.trainer = SimpleNamespace(storage=storage, iter=0, checkpointer=checkpointer, model=model)
        for it, losses in enumerate(per_iteration):
            storage.iter = guard.trainer.iter = it
            model.last_losses = _step(losses)
            guard.after_step()
            if checkpointer is not None:
                checkpointer.save(f"model_{it:07d}")
            done.append(it)
    return done


def test_guard_stops_after_consecutive_runaway_iterations():
    runaway = {**DETECTION, "loss_pd": 7.9e30}
    guard = RunawayDistillationGuard(max_ratio=1000.0, patience=3)
    # a calm iteration in between resets the count
    assert _run_guard(guard, [runaway, runaway, DETECTION, runaway, runaway]) == [0, 1, 2, 3, 4]
    guard = RunawayDistillationGuard(max_ratio=1000.0, patience=3)
    with pytest.raises(RunawayDistillationError) as err:
        _run_guard(guard, [DETECTION, runaway, runaway, runaway, runaway])
    message = str(err.value)
    assert "loss_pd = 7.9e+30" in message and "7.9e+30 x the detection loss" in message
    assert "MAX_RATIO 1000" in message and "3 consecutive iterations, up to iteration 3" in message
    assert "MODEL.DISTILL.MAX_RATIO 0" in message  # the off switch is named


def test_guard_points_last_checkpoint_back_at_the_last_good_one():
    runaway = {**DETECTION, "loss_pd": 7.9e30}
    checkpointer = _Checkpointer()
    with pytest.raises(RunawayDistillationError) as err:
        _run_guard(RunawayDistillationGuard(1000.0, 3), [DETECTION, runaway, DETECTION, runaway, runaway, runaway],
                   checkpointer)
    # iterations 3 and 4 were saved during the streak that stopped training at 5 (not saved)
    assert checkpointer.saved == [f"model_{i:07d}" for i in range(5)]
    assert checkpointer.get_checkpoint_file() == "out/model_0000002.pth"
    assert ("out/model_0000004.pth was saved after the runaway began, so last_checkpoint points again at "
            "out/model_0000002.pth, the last good one") in str(err.value)

    checkpointer = _Checkpointer()
    with pytest.raises(RunawayDistillationError, match="model_0000001.pth was saved after the runaway began "
                       "and no checkpoint before it: train from the start"):
        _run_guard(RunawayDistillationGuard(1000.0, 3), [runaway] * 3, checkpointer)
    assert checkpointer.get_checkpoint_file() == "out/model_0000001.pth"  # nothing good to point at

    checkpointer = _Checkpointer()
    with pytest.raises(RunawayDistillationError,
                       match="the newest checkpoint, out/model_0000000.pth, is the last good one"):
        _run_guard(RunawayDistillationGuard(1000.0, 1), [DETECTION, runaway], checkpointer)


def test_guard_off_switch_and_bad_values():
    cfg = add_hkd_config(get_cfg())
    assert isinstance(build_runaway_guard(cfg), RunawayDistillationGuard)
    cfg.MODEL.DISTILL.MAX_RATIO = 0.0
    assert build_runaway_guard(cfg) is None
    with pytest.raises(ValueError, match="MAX_RATIO_ITERS >= 1"):
        RunawayDistillationGuard(10.0, 0)


def test_output_dir_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    first, second = OutputDirLock(str(tmp_path)), OutputDirLock(str(tmp_path))
    first.acquire()
    with pytest.raises(OutputDirBusyError, match=f"OUTPUT_DIR {tmp_path} is in use .*pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_output_dir_lock_dies_with_a_killed_holder(tmp_path):
    # The holder takes the same flock as OutputDirLock (without importing Detectron2: fast).
    lock_file = tmp_path / LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time; f = open(%r, 'a+'); fcntl.flock(f, fcntl.LOCK_EX);"
         "f.write('pid %%d' %% os.getpid()); f.flush(); print('locked', flush=True); time.sleep(600)" % str(lock_file)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputDirBusyError, match=f"pid {holder.pid}"):
        OutputDirLock(str(tmp_path)).acquire()
    holder.kill()
    holder.wait()
    OutputDirLock(str(tmp_path)).acquire()  # no stale lock after kill -9


def test_config_changes_list_every_differing_key():
    old = add_hkd_config(get_cfg())
    new = old.clone()
    new.SOLVER.BASE_LR = old.SOLVER.BASE_LR / 2
    new.INPUT.MIN_SIZE_TRAIN = (96,)
    new.OUTPUT_DIR = "elsewhere"  # not a change of what is trained
    changes = config_changes(old.dump(), new)
    assert changes == [
        ("INPUT.MIN_SIZE_TRAIN", list(old.INPUT.MIN_SIZE_TRAIN), [96]),
        ("SOLVER.BASE_LR", old.SOLVER.BASE_LR, old.SOLVER.BASE_LR / 2),
    ]
    text = describe_config_changes(changes, "out/model_0000009.pth")
    assert "out/model_0000009.pth" in text and "2 keys differ" in text and "SOLVER.BASE_LR" in text
    assert config_changes(old.dump(), old) == []


class _Checkpointer:
    """What the hooks use of a checkpointer, in memory: ``tag`` plays ``last_checkpoint``."""

    save_to_disk = True

    def __init__(self):
        self.saved = []
        self.tag = ""

    def has_checkpoint(self):
        return bool(self.tag)

    def get_checkpoint_file(self):
        return f"out/{self.tag}" if self.tag else ""

    def save(self, name, **kwargs):
        self.saved.append(name)
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, basename):
        self.tag = basename


def test_signal_saves_a_checkpoint_after_the_iteration_and_stops():
    hook = StopOnSignal()
    hook.trainer = SimpleNamespace(iter=3, max_iter=10, checkpointer=_Checkpointer())
    hook.before_train()
    try:
        hook.after_step()  # nothing received yet
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(TrainingInterrupted) as stop:
            hook.after_step()
    finally:
        hook.after_train()
    assert hook.trainer.checkpointer.saved == ["model_0000003"]
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM after iteration 3" in str(stop.value) and "--resume" in str(stop.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

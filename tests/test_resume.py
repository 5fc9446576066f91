"""Exact resume: a run killed or stopped anywhere and resumed ends with the weights and metrics of the straight run.

Every run here is seo-train's console script in this process (tests/helpers/commands.py), except the
killed ones: SIGKILL ends a forked child of this process (tests/helpers/fault_inject.py), which starts
training at once with torch already imported. Signals the trainer handles (SIGTERM, SIGINT) are sent to
this process at a chosen step. One intra-op thread throughout (tests/conftest.py): the runs compared
bit for bit then compute alike. tests/reliability/test_kill_and_resume.py kills at seeded points too,
mid-epoch from every_n_steps checkpoints among them.
"""

import fcntl
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from helpers.commands import run_command
from helpers.fault_inject import injected, train_in_child
from omegaconf import OmegaConf

from seo_cli.checkpoint import load_checkpoint
from seo_cli.errors import UserError
from seo_cli.launch import LOCK_FILE
from seo_cli.train import train

pytestmark = pytest.mark.slow

# 200 rows: 140 training rows, 9 optimizer steps of 16 (the last of 12) per epoch; 4 epochs are 36 steps,
# and dropout draws from the RNG.
STEPS_PER_EPOCH = 9
RUN = ["debug=smoke", "data.num_rows=200", "epochs=4", "logger=none", "trainer.progress=plain"]


def seo_train(run_dir: Path, *overrides: str):
    return run_command("train", *RUN, *overrides, f"hydra.run.dir={run_dir}")


def killed_run(run_dir: Path, *overrides: str, **fault) -> None:
    """seo-train in a forked child, ended by SIGKILL where ``fault`` says (fault_inject.injected)."""
    run_dir.mkdir(parents=True)
    log = run_dir.parent / "killed.log"
    code = train_in_child(*RUN, *overrides, f"hydra.run.dir={run_dir}", log=log, **fault)
    assert code == -signal.SIGKILL, f"{fault} did not kill the run (exit {code}):\n{log.read_text()[-3000:]}"
    # The run's DataLoader workers were killed too, but the kernel releases their hold on the run
    # directory's lock (flock, shared with the forked workers) only as they exit: wait for it.
    with open(run_dir / LOCK_FILE) as lock:
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed run's lock was never released"
                time.sleep(0.02)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def without_timing(rows: list[dict]) -> list[dict]:
    """Metric rows without speed and memory figures, which differ from process to process."""
    return [{k: v for k, v in row.items() if not k.startswith(("speed/", "memory/"))} for row in rows]


def assert_same_run(run_dir: Path, straight: Path) -> None:
    expected, got = weights(straight), weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    assert len(history) == 4
    assert without_timing(history) == without_timing(
        load_checkpoint(straight / "checkpoints" / "last.pt")["history"]
    )
    # metrics.jsonl too: rows the killed run logged past its checkpoint were dropped, then logged again.
    assert without_timing(read_jsonl(run_dir / "metrics.jsonl")) == without_timing(
        read_jsonl(straight / "metrics.jsonl")
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    done = seo_train(run_dir)
    assert done.code == 0, done.output[-3000:]
    return run_dir


@pytest.mark.parametrize(
    "fault, overrides, last_step, resumes_at",
    [
        # Killed in epoch 3: resumes from last.pt of epoch 2 (step 18).
        (dict(kill_at_step=20), (), 18, "last.pt"),
        # Checkpoints every 8 steps, killed after step 25: resumes mid-epoch 3 from step 24, batch 6 of 9,
        # with the data streamed by DataLoader workers instead of kept on the device. (Mid-epoch resumes
        # of device-resident data: tests/reliability/test_kill_and_resume.py.)
        (
            dict(kill_at_step=25),
            ("trainer.checkpoint.every_n_steps=8", "data.placement=stream", "data.num_workers=1"),
            24,
            "last.pt",
        ),
        # Killed half-way through the 6th write, epoch 2's last.pt, just after best.pt: last.pt still
        # holds step 16, and resume=auto takes the newest complete file, best.pt of step 18.
        (dict(kill_in_save=6), ("trainer.checkpoint.every_n_steps=8",), 16, "best.pt"),
    ],
    ids=["epoch-boundary", "mid-epoch-streamed", "during-checkpoint-write"],
)
def test_sigkill_then_resume_auto_matches_the_straight_run(
    tmp_path, straight, fault, overrides, last_step, resumes_at
):
    run_dir = tmp_path / "run"
    killed_run(run_dir, *overrides, **fault)
    files = list((run_dir / "checkpoints").iterdir())
    # The write that was cut short left only its temp file; every .pt file under its final name loads.
    for path in files:
        if path.suffix == ".pt":
            load_checkpoint(path)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] == last_step
    step = load_checkpoint(run_dir / "checkpoints" / resumes_at)["global_step"]

    resumed = seo_train(run_dir, *overrides, "resume=auto")
    assert resumed.code == 0, resumed.output[-3000:]
    assert f"Resumed at epoch {step // STEPS_PER_EPOCH}, step {step}" in resumed.output
    assert_same_run(run_dir, straight)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / resumes_at)
    assert summary["global_step"] == 4 * STEPS_PER_EPOCH


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_epoch_saves_last_pt_and_prints_the_resume_command(tmp_path, straight, name, code):
    run_dir = tmp_path / "run"
    with injected(signal_at_step=13, signal_name=name):
        stopped = seo_train(run_dir)
    assert stopped.code == code, stopped.output[-3000:]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # The signal came as step 14 began: the loop finished that step, then saved, 5 steps into epoch 2,
    # with the running sums of that epoch.
    assert (state["epoch"], state["global_step"], state["position"]["batches_done"]) == (1, 14, 5)
    assert state["position"]["epoch_rows"] == 5 * 16
    assert f"{name} at step 14" in stopped.output
    assert f"hydra.run.dir={run_dir} resume=auto" in stopped.output
    assert "Traceback" not in stopped.output
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    resumed = seo_train(run_dir, "resume=auto")
    assert resumed.code == 0, resumed.output[-3000:]
    assert_same_run(run_dir, straight)


def test_a_second_signal_during_the_save_does_not_cut_it_short(tmp_path, straight):
    run_dir = tmp_path / "run"
    with injected(signal_at_step=13, signal_again_in_save=True):
        stopped = seo_train(run_dir)
    assert stopped.code == 143, stopped.output[-3000:]
    assert "Traceback" not in stopped.output and "KeyboardInterrupt" not in stopped.output
    assert "SIGTERM received again: still saving last.pt before stopping." in stopped.output
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] == 14
    assert f"hydra.run.dir={run_dir} resume=auto" in stopped.output
    resumed = seo_train(run_dir, "resume=auto")
    assert resumed.code == 0, resumed.output[-3000:]
    assert_same_run(run_dir, straight)


def test_a_second_seo_train_on_a_locked_run_directory_names_the_holder_and_exits_1(tmp_path):
    """Two `resume=auto` on one run directory would both append to it; flock keeps the second out, and
    a killed holder releases the lock. (flock is per open file: this process's seo-train meets the
    holder's lock as another process's would.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run_dir / '.seo-train.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True)\ntime.sleep(300)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = seo_train(run_dir, "epochs=1", "resume=auto")
        assert second.code == 1
        lines = [line for line in second.output.splitlines() if "is in use by another seo-train" in line]
        assert len(lines) == 1 and f"(process {holder.pid})" in lines[0], second.output[-2000:]
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    again = seo_train(run_dir, "epochs=1", "resume=auto")  # the killed holder's lock is gone
    assert again.code == 0, again.output[-3000:]


# In-process runs below: the config checks and the longer-run path need no subprocess.


def _run(compose_train, run_dir: Path, *overrides: str) -> dict:
    cfg = compose_train("debug=smoke", "logger=none", "trainer.progress=plain", *overrides)
    return train(cfg, run_dir)


def test_resume_with_a_changed_optimizer_is_refused_naming_the_keys(compose_train, tmp_path):
    _run(compose_train, tmp_path / "a", "epochs=1")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as err:
        _run(
            compose_train,
            tmp_path / "b",
            "epochs=2",
            f"resume={last}",
            "learning_rate=1e-3",
            "model.dropout=0.2",
        )
    message = str(err.value)
    assert "optimizer.lr: 0.003 -> 0.001" in message
    assert "model.dropout: 0.1 -> 0.2" in message
    assert "resume_strict=false" in message and "\n" not in message


def test_resume_strict_false_resumes_with_a_warning(compose_train, tmp_path, caplog):
    _run(compose_train, tmp_path / "a", "epochs=1")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    with caplog.at_level(logging.WARNING):
        summary = _run(
            compose_train,
            tmp_path / "b",
            "epochs=2",
            f"resume={last}",
            "learning_rate=1e-3",
            "resume_strict=false",
        )
    assert "optimizer.lr: 0.003 -> 0.001" in caplog.text
    assert summary["epochs_trained"] == 2 and summary["global_step"] == 54


def test_resume_path_trains_longer_on_a_schedule_stretched_to_the_new_length(compose_train, tmp_path):
    _run(compose_train, tmp_path / "a", "epochs=1", "scheduler=cosine")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    summary = _run(compose_train, tmp_path / "b", "epochs=3", f"resume={last}", "scheduler=cosine")
    assert summary["epochs_trained"] == 3 and summary["global_step"] == 81
    state = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert [row["epoch"] for row in state["history"]] == [1.0, 2.0, 3.0]
    # The cosine runs over the new 81 steps: after step 81 the rate is at its floor (0), and at the
    # resume point (step 27) it was 3e-3 * (1 + cos(pi * 27 / 81)) / 2, not the 1-epoch schedule's 0.
    lrs = {
        row["step"]: row["train/lr"]
        for row in read_jsonl(tmp_path / "b" / "metrics.jsonl")
        if "train/lr" in row
    }
    import math

    assert lrs[30] == pytest.approx(3e-3 * (1 + math.cos(math.pi * 30 / 81)) / 2, rel=1e-5)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert OmegaConf.create(state["config"]).epochs == 3


def test_resume_auto_without_a_checkpoint_starts_fresh(compose_train, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        summary = _run(compose_train, tmp_path / "new", "resume=auto")
    assert "found no checkpoint" in caplog.text
    assert summary["resumed_from"] is None and summary["global_step"] == 27


def test_resume_from_a_missing_file_is_a_clear_error(compose_train, tmp_path):
    with pytest.raises(UserError, match=r"resume=.*missing\.pt is not a checkpoint file"):
        _run(compose_train, tmp_path / "a", f"resume={tmp_path / 'missing.pt'}")


def test_tensorboard_hides_the_steps_a_killed_run_logged_past_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seo_cli.loggers import TensorBoardLogger

    killed = TensorBoardLogger(tmp_path)
    for step in range(1, 21):  # checkpoint at step 10, killed after logging step 20
        killed.log_metrics({"train/loss": float(step)}, step)
    killed.close()
    resumed = TensorBoardLogger(tmp_path, resume_step=10)
    for step in range(11, 16):
        resumed.log_metrics({"train/loss": 100.0 + step}, step)
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == list(range(1, 16))
    # Steps 11-20 of the killed run are gone; the resumed run's values stand in their place.
    assert [e.value for e in scalars] == [float(s) for s in range(1, 11)] + [100.0 + s for s in range(11, 16)]

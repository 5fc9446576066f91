"""SLURM through submitit, on submitit's local executor: the same launcher, job folders, warning signal and
requeue as on a cluster, with the jobs as real processes of this machine.

seo-train's console script runs in this process and submits the jobs (tests/helpers/commands.py); each
job's task is a process of its own that imports torch (about 5 s), so one sweep is shared: job 0 runs
through, job 1 is sent the pre-emption signal (SIGUSR2) at step 13 by a test callback
(tests/helpers/fault_inject.py), writes last.pt, is requeued with resume=auto and finishes in the same
job directory, bit for bit the run that was never stopped. A device=ddp job runs its two ranks as two
tasks of one job, without DDP workers of its own. The SLURM variables -> rank mapping is checked on
submitit's own SLURM environment.
"""

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from helpers.commands import run_command

from seo_cli.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
# 140 training rows: 9 optimizer steps of 16 per epoch, 18 in all; the MLP keeps each step short.
RUN = ["debug=smoke", "model=mlp", "data.num_rows=200", "epochs=2", "logger=none", "trainer.progress=plain"]
RATES = ("0.001", "0.002")
PREEMPT = [
    "+hydra.callbacks.fault._target_=helpers.fault_inject.SignalJobAtStep",
    "+hydra.callbacks.fault.job_num=1",
    "+hydra.callbacks.fault.step=13",
]


def seo_train_jobs(*overrides: str):
    """seo-train in this process, its submitit jobs below it, able to import the test callbacks."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    )
    try:
        done = run_command("train", "-m", "hydra/launcher=submitit_local", *overrides)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert done.code == 0, done.output[-5000:]
    assert "Traceback" not in done.output, done.output[-5000:]
    return done


def submitit_logs(sweep: Path) -> str:
    """What the sweep's tasks printed (submitit's log lines among them), every attempt (appended)."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_log.out")))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("submitit") / "sweep"
    seo_train_jobs(*RUN, *PREEMPT, f"learning_rate={','.join(RATES)}", f"hydra.sweep.dir={sweep}")
    return sweep


def test_a_two_job_sweep_on_the_local_executor_ends_with_both_jobs_results(sweep):
    rows = {row["job"]: row for row in csv_rows(sweep / "summary.csv")}
    assert sorted(rows) == ["0", "1"]
    for job, rate in zip(("0", "1"), RATES, strict=True):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["global_step"] == 18
        assert f"learning_rate={rate}" in summary["overrides"]
        assert float(rows[job]["objective"]) == pytest.approx(summary["objective_value"])
    assert rows["0"]["objective"] != rows["1"]["objective"]
    # Each job ran as a submitit job of its own, whose folder holds its task's result.
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2


def test_a_preempted_job_writes_last_pt_requeues_and_ends_as_the_run_never_stopped(sweep, tmp_path):
    job = sweep / "1"
    log = (job / "train.log").read_text()
    # The warning came as step 14 began: the loop finished the step, saved it and handed the signal to
    # submitit, which requeued the job with resume=auto; the requeued job went on from step 14.
    assert "SIGUSR2 received: saving last.pt after the current step." in log
    assert f"Pre-empted at step 14; {job / 'checkpoints' / 'last.pt'} is saved." in log
    assert "Resumed at epoch 1, step 14" in log
    # submitit requeued one job, job 1, which started a second time (three starts in the sweep).
    requeued = re.findall(r"^submitit INFO .* - Requeued job (\d+)", submitit_logs(sweep), re.MULTILINE)
    assert len(requeued) == 1 and submitit_logs(sweep).count("Starting with JobEnvironment") == 3
    overrides = (job / ".hydra" / "overrides.yaml").read_text()
    assert "resume=auto" in overrides and f"learning_rate={RATES[1]}" in overrides
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["resumed_from"] == str(job / "checkpoints" / "last.pt")
    assert "resume=auto" not in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()  # job 0 ran through

    straight = tmp_path / "straight"
    done = run_command("train", *RUN, f"learning_rate={RATES[1]}", f"hydra.run.dir={straight}")
    assert done.code == 0, done.output[-3000:]
    expected, got = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, job))
    assert expected["model"].keys() == got["model"].keys()
    for name in expected["model"]:
        assert torch.equal(expected["model"][name], got["model"][name]), name
    assert without_timing(got["history"]) == without_timing(expected["history"])
    # metrics.jsonl too: the rows of steps after the checkpoint were dropped on resume, then logged again.
    assert without_timing(read_jsonl(job / "metrics.jsonl")) == without_timing(
        read_jsonl(straight / "metrics.jsonl")
    )


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(("speed/", "memory/"))} for row in rows]


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

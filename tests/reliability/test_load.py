"""6. Load: a 20-job sweep on the CPU finishes with every job's summary and no two jobs in one directory,
and runs started in the same second land in distinct run directories.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.commands import run_command

from .support import cli_env, tiny_overrides, write_tiny_table

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

JOBS = 20


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep: seo-train -m, its console script in this process (tests/helpers/commands.py); Hydra's
    launcher runs the jobs one after another in the calling process either way."""
    root = tmp_path_factory.mktemp("sweep")
    table = write_tiny_table(root / "pages.csv")
    sweep_dir = root / "multirun"
    done = run_command(
        "train",
        "-m",
        f"seed=range({JOBS})",
        *tiny_overrides(table),
        "epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    return done, sweep_dir


# Imports first (seconds), says so, waits for the test to post an instant, sleeps until it, then runs
# seo-train's main: every process resolves its run directory from the clock within milliseconds.
START_TOGETHER = """
import sys, time
from pathlib import Path
import seo_cli.train  # the heavy imports, before the barrier
from seo_cli.cli import train
ready, start = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not start.exists():
    time.sleep(0.01)
time.sleep(max(0.0, float(start.read_text()) - time.time()))
sys.argv = ["seo-train", *sys.argv[3:]]
train()
"""


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    table = write_tiny_table(tmp_path / "pages.csv")
    start = tmp_path / "start"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                START_TOGETHER,
                str(tmp_path / f"ready{i}"),
                str(start),
                *tiny_overrides(table),
                f"seed={i}",
            ],
            cwd=tmp_path,  # no hydra.run.dir: the default outputs/train/<date>/<time with microseconds>
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(),
        )
        for i in range(2)
    ]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    posted = tmp_path / "start.tmp"
    posted.write_text(str(int(time.time()) + 1.05))  # just into the next second: both start inside it
    posted.rename(start)  # whole, never half-written
    for process in processes:
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output[-3000:]
    runs = sorted(tmp_path.glob("outputs/train/*/*"))
    assert len(runs) == 2, runs
    # Same second (HH-MM-SS), different microseconds: two directories, one run in each.
    assert runs[0].name[:8] == runs[1].name[:8] and runs[0].name != runs[1].name, [r.name for r in runs]
    seeds = set()
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "ok"
        assert Path(summary["best_checkpoint"]).parent.parent == run
        seeds |= {o for o in summary["overrides"] if o.startswith("seed=")}
    assert seeds == {"seed=0", "seed=1"}


def test_a_20_job_sweep_completes_with_a_summary_per_job(sweep):
    done, sweep_dir = sweep
    assert done.code == 0, done.output[-3000:]
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    assert [p.name for p in jobs] == [str(i) for i in range(JOBS)]
    objectives = []
    for i, job in enumerate(jobs):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "ok", (job, summary.get("error"))
        assert f"seed={i}" in summary["overrides"]
        # The job's files are its own: checkpoints, metrics and the composed config in its folder.
        assert Path(summary["best_checkpoint"]).parent.parent == job
        assert (job / "metrics.jsonl").is_file() and (job / "checkpoints" / "last.pt").is_file()
        assert f"seed: {i}\n" in (job / ".hydra" / "config.yaml").read_text()
        objectives.append(summary["objective_value"])
    assert len(set(objectives)) > 1  # different seeds, different runs
    table = pd.read_csv(sweep_dir / "summary.csv")
    assert len(table) == JOBS
    assert sorted(table["job"]) == list(range(JOBS))
    assert (table["status"] == "ok").all()
    assert sorted(table["seed"]) == list(range(JOBS))
    assert sorted(table["objective"]) == sorted(objectives)

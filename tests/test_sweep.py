"""The sweep summary: every job a row, ranked by the objective, failed jobs last with their error."""

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.commands import run_command
from omegaconf import OmegaConf

from seo_cli.sweep import SweepSummary, summarize


def write_job(
    sweep: Path, job: str, status: str, objective=None, overrides=(), error=None, **metrics
) -> None:
    (sweep / job).mkdir(parents=True)
    summary = {"status": status, "overrides": list(overrides)}
    if status == "ok":
        summary |= {
            "objective_value": objective,
            "num_parameters": 1000,
            "wall_time_s": 2.5,
            "samples_per_second": 400.0,
            "peak_memory_mb": 300.0,
            "best_epoch": 3,
            "metrics": metrics,
        }
    else:
        summary["error"] = error
    (sweep / job / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path) -> Path:
    write_job(
        tmp_path, "0", "ok", 0.9, ["model=mlp", "seed=1"], **{"val/loss": 0.9, "val/intent/accuracy": 0.7}
    )
    write_job(
        tmp_path, "1", "failed", None, ["model=textcnn", "seed=1"], error="model.dropout=2 must be below 1."
    )
    write_job(
        tmp_path, "2", "ok", 0.4, ["model=transformer", "seed=1"], **{"val/loss": 0.4, "test/loss": 0.5}
    )
    write_job(tmp_path, "10", "ok", 0.6, ["model=seo_multitask", "seed=1"], **{"val/loss": 0.6})
    return tmp_path


def test_jobs_are_ranked_by_the_objective_with_failed_jobs_last(sweep):
    frame = summarize(sweep, "val/loss")
    assert frame["job"].tolist() == ["2", "10", "0", "1"]
    assert frame["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert frame["objective"].tolist()[:3] == [0.4, 0.6, 0.9]
    # Only the override that varies is a column; seed=1 is the same everywhere.
    assert "model" in frame.columns and "seed" not in frame.columns
    assert frame.set_index("job").loc["1", "error"] == "model.dropout=2 must be below 1."
    assert frame.set_index("job").loc["2", "test/loss"] == 0.5
    assert pd.isna(frame.set_index("job").loc["0", "test/loss"])  # a metric another job lacks stays empty


def test_an_accuracy_objective_ranks_the_highest_first(tmp_path):
    write_job(tmp_path, "0", "ok", 0.7, ["lr=1"], **{"val/intent/accuracy": 0.7})
    write_job(tmp_path, "1", "ok", 0.8, ["lr=2"], **{"val/intent/accuracy": 0.8})
    assert summarize(tmp_path, "val/intent/accuracy")["job"].tolist() == ["1", "0"]


def test_the_callback_writes_csv_and_markdown_at_the_sweep_root(sweep):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "objective": "val/loss"})
    SweepSummary().on_multirun_end(config)
    csv = pd.read_csv(sweep / "summary.csv", dtype={"job": str})
    assert csv["job"].tolist() == ["2", "10", "0", "1"]
    assert csv["num_parameters"].tolist()[:3] == [1000, 1000, 1000]
    markdown = (sweep / "summary.md").read_text()
    assert "Ranked by `val/loss` (min is best)" in markdown
    assert "| 2 | transformer | ok | 0.4 | 1000 | 2.5 | 400 | 300 | 3 |" in markdown


def test_the_callback_fails_the_sweep_only_when_every_job_failed(tmp_path):
    write_job(tmp_path, "0", "failed", error="bad")
    write_job(tmp_path, "1", "failed", error="worse")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "objective": "val/loss"})
    with pytest.raises(SystemExit, match="every job of the sweep failed"):
        SweepSummary().on_multirun_end(config)
    assert (tmp_path / "summary.csv").exists()


def test_a_sweep_with_a_failing_job_finishes_and_summarises_both(tmp_path):
    """seo-train -m, its console script in this process (tests/helpers/commands.py)."""
    sweep_dir = tmp_path / "sweep"
    result = run_command(
        "train",
        "-m",
        "debug=smoke",
        "logger=none",
        "scheduler.warmup_steps=5,60",  # 60 is longer than the 27-step run: that job fails
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.code == 0, result.output[-2000:]
    frame = pd.read_csv(sweep_dir / "summary.csv")
    assert frame["status"].tolist() == ["ok", "failed"]
    assert frame["scheduler.warmup_steps"].tolist() == [5, 60]
    assert frame["error"].tolist()[1].startswith("scheduler.warmup_steps=60 is not shorter than the run")
    assert frame["objective"].tolist()[0] == pytest.approx(frame["val/loss"].tolist()[0])

"""An Optuna sweep killed in the middle of a trial (SIGKILL: nothing is told to the study) and then
continued: the cut-off trial uses up neither a trial of n_trials nor the failure budget, its point is
run again, and the sweep summary shows it as a ``killed`` row."""

import json
import logging
import math

import optuna
import pytest
import yaml

from seo_cli.sweep import summarize
from seo_cli.tuning import StudySettings, run_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Killed(BaseException):
    """SIGKILL as the study sees it: the sweep's process stops inside the trial and tells it nothing."""


def settings(tmp_path, **overrides) -> StudySettings:
    fields = dict(
        study_name="t",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        direction="minimize",
        sampler="tpe",
        pruner="none",
        n_trials=3,
        seed=0,
        max_failure_rate=0.0,  # any counted failure would stop the sweep
        params={"x": "interval(-2.0, 2.0)"},
    )
    return StudySettings(**(fields | overrides))


class Launch:
    """Hydra's launcher, in a sweep directory: makes the job folder as Hydra does (``.hydra/overrides.yaml``
    first), then writes summary.json, unless the job is ``killed``."""

    def __init__(self, sweep_dir, killed: int | None = None) -> None:
        self.sweep_dir, self.killed, self.jobs = sweep_dir, killed, []

    def __call__(self, batch, first_job):
        [overrides] = batch
        job = self.sweep_dir / str(first_job)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        x = float(dict(o.split("=", 1) for o in overrides)["x"])
        self.jobs.append((first_job, x))
        if first_job == self.killed:
            raise Killed
        summary = {"status": "ok", "objective_value": (x - 1) ** 2, "overrides": overrides, "metrics": {}}
        (job / "summary.json").write_text(json.dumps(summary))
        return [("ok", (x - 1) ** 2)]


def test_a_trial_killed_mid_sweep_is_run_again_on_continuing_and_is_a_killed_row(tmp_path, caplog):
    first = Launch(tmp_path, killed=1)
    with pytest.raises(Killed):
        run_study(settings(tmp_path), [], first)
    killed_x = first.jobs[1][1]

    second = Launch(tmp_path)
    caplog.set_level(logging.INFO, logger="seo_cli.tuning")
    study = run_study(settings(tmp_path), [], second)  # max_failure_rate=0: a counted kill would raise
    assert "Continuing study t: 1 of 3 trials already done." in caplog.text
    assert "Trials cut off by a kill before they reported (numbers 1) run again" in caplog.text

    # Job 2 runs the killed point again; 3 trials complete besides the killed one.
    assert second.jobs[0] == (2, killed_x) and [job for job, _ in second.jobs] == [2, 3]
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs == {"killed": True} and trials[1].params == trials[2].params

    frame = summarize(tmp_path, "val/loss")
    assert sorted(frame["job"]) == ["0", "1", "2", "3"]
    killed = frame.iloc[-1]  # ranked last, as failed jobs are
    assert killed["job"] == "1"
    assert killed["status"] == "killed" and math.isnan(killed["objective"])
    assert float(killed["x"]) == killed_x
    assert killed["error"].startswith("its process ended without writing summary.json (killed")
    assert (frame["status"] == "ok").sum() == 3


def test_a_killed_grid_point_is_tried_again(tmp_path):
    grid = settings(tmp_path, sampler="grid", n_trials=10, params={"x": "choice(0.0, 1.0, 2.0)"})
    first = Launch(tmp_path, killed=1)
    with pytest.raises(Killed):
        run_study(grid, [], first)
    second = Launch(tmp_path)
    run_study(grid, [], second)
    tried = sorted([x for _, x in first.jobs[:1]] + [x for _, x in second.jobs])
    assert tried == [0.0, 1.0, 2.0] and first.jobs[1][1] in [x for _, x in second.jobs]

"""Optuna tuning: search space, samplers, the study loop with pruning, failures and resume, and the CLI sweep."""

import json
import math

import optuna
import pandas as pd
import pytest
import torch
from helpers.commands import run_command
from torch import nn

from seo_cli.config import TrainerConfig
from seo_cli.errors import UserError
from seo_cli.trainer import fit
from seo_cli.tuning import StudySettings, TrialReporter, make_pruner, make_sampler, run_study, search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_search_space_from_hydra_sweep_syntax():
    space = search_space(
        {
            "learning_rate": "tag(log, interval(1e-4, 1e-2))",
            "model.dropout": "interval(0.0, 0.5)",
            "layers": "int(interval(1, 8))",
            "batch_size": "range(32, 129, 32)",
            "optimizer": "choice(adam, adamw)",
        }
    )
    assert space["learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert space["layers"] == optuna.distributions.IntDistribution(1, 8)
    assert space["batch_size"] == optuna.distributions.IntDistribution(32, 128, step=32)
    assert space["optimizer"] == optuna.distributions.CategoricalDistribution(["adam", "adamw"])


def test_a_plain_value_is_not_a_search_space():
    with pytest.raises(UserError, match=r"hydra.sweeper.params.epochs=5 is not a search space"):
        search_space({"epochs": "5"})


def test_grid_needs_finite_values_and_unknown_names_are_errors():
    space = search_space({"lr": "interval(0.1, 0.2)"})
    with pytest.raises(
        UserError, match=r"sampler=grid needs a finite set of values, but hydra.sweeper.params.lr"
    ):
        make_sampler("grid", 0, space)
    with pytest.raises(UserError, match=r"hydra.sweeper.sampler='cmaes' is not a sampler"):
        make_sampler("cmaes", 0, space)
    with pytest.raises(UserError, match=r"hydra.sweeper.pruner='asha' is not a pruner"):
        make_pruner("asha")


def settings(tmp_path, **overrides) -> StudySettings:
    fields = dict(
        study_name="t",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        direction="minimize",
        sampler="tpe",
        pruner="none",
        n_trials=6,
        seed=0,
        max_failure_rate=0.5,
        params={"x": "interval(-2.0, 2.0)", "kind": "choice(a, b)"},
    )
    return StudySettings(**(fields | overrides))


class FakeLaunch:
    """Stands in for Hydra's launcher: scores (x - 1)^2, plus 1 for kind b; records the jobs it ran."""

    def __init__(self, status=lambda job: "ok") -> None:
        self.jobs, self.status = [], status

    def __call__(self, batch, first_job):
        [overrides] = batch
        values = dict(o.split("=", 1) for o in overrides)
        self.jobs.append((first_job, values))
        score = (float(values["x"]) - 1.0) ** 2 + (values["kind"] == "b")
        return [(self.status(first_job), score)]


def test_run_study_runs_n_trials_and_tells_the_study_each_value(tmp_path):
    launch = FakeLaunch()
    study = run_study(settings(tmp_path), ["epochs=3"], launch)
    assert [job for job, _ in launch.jobs] == [0, 1, 2, 3, 4, 5]
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    for (_, values), trial in zip(launch.jobs, trials, strict=True):
        # Every job got the fixed overrides, the sampled values and what it needs to report back.
        assert values["epochs"] == "3" and float(values["x"]) == trial.params["x"]
        assert values["tuning.trial_id"] == str(trial._trial_id) and values["tuning.study_name"] == "t"
        assert trial.value == pytest.approx((trial.params["x"] - 1) ** 2 + (trial.params["kind"] == "b"))


def test_a_rerun_continues_the_study_with_new_job_numbers_and_new_draws(tmp_path):
    first = FakeLaunch()
    run_study(settings(tmp_path, n_trials=3), [], first)
    second = FakeLaunch()
    study = run_study(settings(tmp_path, n_trials=5), [], second)
    assert [job for job, _ in second.jobs] == [3, 4]  # job folders 0-2 are not touched
    assert len(study.get_trials()) == 5
    # The sampler was re-seeded past the first run's draws instead of repeating them.
    assert {v["x"] for _, v in second.jobs}.isdisjoint({v["x"] for _, v in first.jobs})


def test_a_trial_left_running_by_a_killed_sweep_is_closed_and_does_not_use_up_a_trial(tmp_path):
    s = settings(tmp_path, n_trials=2)
    study = optuna.create_study(study_name=s.study_name, storage=s.storage)
    study.ask()  # never told: what a kill leaves behind
    run_study(s, [], FakeLaunch())
    trials = optuna.load_study(study_name="t", storage=s.storage).get_trials()
    states = [t.state for t in trials]
    # tests/test_tuning_killed.py checks the retry of the killed point and the summary row.
    assert states == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].user_attrs == {"killed": True}


def test_pruned_and_failed_jobs_are_told_as_such(tmp_path):
    launch = FakeLaunch(status=lambda job: {0: "pruned", 1: "failed"}.get(job, "ok"))
    study = run_study(settings(tmp_path, n_trials=4), [], launch)
    states = [t.state for t in study.get_trials()]
    assert states[:2] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL]
    assert states[2:] == [optuna.trial.TrialState.COMPLETE] * 2


def test_too_many_failures_stop_the_search(tmp_path):
    launch = FakeLaunch(status=lambda job: "failed")
    with pytest.raises(
        UserError, match=r"2 of 2 trials failed, more than hydra.sweeper.max_failure_rate=0.25 of 6"
    ):
        run_study(settings(tmp_path, max_failure_rate=0.25), [], launch)
    assert len(launch.jobs) == 2


def test_grid_sampler_stops_when_the_grid_is_exhausted(tmp_path):
    s = settings(
        tmp_path, sampler="grid", n_trials=10, params={"x": "choice(0.0, 1.0, 2.0)", "kind": "choice(a)"}
    )
    launch = FakeLaunch()
    run_study(s, [], launch)
    assert sorted(float(v["x"]) for _, v in launch.jobs) == [0.0, 1.0, 2.0]


def test_trial_reporter_reports_each_epoch_and_the_median_pruner_stops_a_lagging_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="p", storage=storage, pruner=make_pruner("median"))
    for value in (1.0, 1.1, 0.9):  # three finished trials whose epoch-2 value is about 1
        trial = study.ask()
        trial.report(value + 1, 1)
        trial.report(value, 2)
        study.tell(trial, value)
    trial = study.ask()
    reporter = TrialReporter(storage, "p", trial._trial_id, "median", "val/loss")
    assert not reporter.should_prune(1, 5.0)  # epoch 1 is warm-up: no verdict yet
    assert reporter.should_prune(2, 5.0)  # far worse than the median of the others at epoch 2
    stored = optuna.load_study(study_name="p", storage=storage).get_trials()[-1]
    assert stored.intermediate_values == {1: 5.0, 2: 5.0}


class PruneAfter:
    monitor = "train/loss"

    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen = epoch, []

    def should_prune(self, epoch: int, value: float) -> bool:
        self.seen.append((epoch, value))
        return epoch >= self.epoch


def test_fit_stops_when_the_trial_is_pruned():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(16, 3)
    batches = [(x[i : i + 4], x[i : i + 4].sum(1, keepdim=True)) for i in range(0, 16, 4)]
    trial = PruneAfter(2)
    result = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda out, y: nn.functional.mse_loss(out, y),
        batches,
        TrainerConfig(epochs=5, monitor="train/loss", progress="plain"),
        trial=trial,
    )
    assert result.pruned and len(result.history) == 2
    assert [e for e, _ in trial.seen] == [1, 2]
    assert trial.seen[1][1] == pytest.approx(result.history[1]["train/loss"])


@pytest.mark.slow
def test_cli_tuning_sweep_summarises_and_a_rerun_continues_it(tmp_path):
    """seo-train hparams_search=optuna, its console script in this process (tests/helpers/commands.py)."""
    sweep = tmp_path / "sweep"

    def seo_train(n_trials: int):
        return run_command(
            "train",
            "hparams_search=optuna",
            "debug=smoke",
            "epochs=2",
            "logger=none",
            f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweep.dir={sweep}",
        )

    first = seo_train(2)
    assert first.code == 0, first.output[-3000:]
    assert (sweep / "optuna.db").exists()
    job0 = (sweep / "0" / "summary.json").read_text()
    second = seo_train(3)
    assert second.code == 0, second.output[-3000:]
    assert "Continuing study seo: 2 of 3 trials already done." in second.output
    assert (sweep / "0" / "summary.json").read_text() == job0  # finished jobs are not re-run
    frame = pd.read_csv(sweep / "summary.csv", dtype={"job": str})
    assert sorted(frame["job"]) == ["0", "1", "2"]
    # The continuous parameters differ between trials, so they are columns (a choice drawn alike is not).
    assert {"learning_rate", "weight_decay", "model.dropout"} <= set(frame.columns)
    assert not any(c.startswith("tuning.") for c in frame.columns)
    study = optuna.load_study(study_name="seo", storage=f"sqlite:///{sweep / 'optuna.db'}")
    values = {t.number: t.value for t in study.get_trials()}
    for job in ("0", "1", "2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] in ("ok", "pruned")
        if summary["status"] == "ok":
            assert math.isclose(values[int(job)], summary["objective_value"])


def test_pruner_names_build_optunas_pruners():
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    hyperband = make_pruner("hyperband", max_epochs=9)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 9
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)

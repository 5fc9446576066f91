"""Hyperparameter search with Optuna inside a Hydra sweep: the search space, samplers, pruners, the loop.

    seo-train hparams_search=optuna                                   # TPE over conf/hparams_search/optuna.yaml
    seo-train hparams_search=optuna hydra.sweeper.n_trials=50 hydra.sweeper.sampler=random
    seo-train hparams_search=optuna hydra.sweep.dir=<an earlier sweep>   # continue that study

The study lives in SQLite in the sweep directory, so re-running the command on the same directory
continues it. Each trial is one seo-train job; it reports its validation objective after every epoch
to the study (``TrialReporter``) and stops early when the pruner says so. The Hydra plugin in
``hydra_plugins/seo_optuna_sweeper`` is a thin shim over ``run_study``.
"""

import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from seo_cli.errors import UserError

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


def make_pruner(name: str, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """The same pruner in the sweeper and in each trial's process (Optuna does not store it in the study)."""
    if name == "median":
        # Steps are 1-based epochs: no verdict before epoch 2, nor before 3 trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs or "auto")
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"hydra.sweeper.pruner={name!r} is not a pruner; use one of {', '.join(PRUNERS)}.")


def search_space(params: dict[str, str]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions from Hydra sweep syntax: ``choice(a,b)``, ``range(1,5)``,
    ``interval(0,0.5)``, ``tag(log, interval(1e-4,1e-2))``, ``int(interval(1,8))``.

    Raises:
        UserError: a value that is not a sweep, or an empty one.
    """
    parser = OverridesParser.create()
    space = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        space[key] = _distribution(override)
    return space


def _distribution(override: Override) -> optuna.distributions.BaseDistribution:
    key, value = override.get_key_element(), override.value()
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            last = start + step * ((stop - 1 - start) // step)  # range() excludes stop
            return optuna.distributions.IntDistribution(start, last, step=step)
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(value.start, value.end, log=log_scale)
    raise UserError(
        f"hydra.sweeper.params.{key}={value!r} is not a search space; use choice(...), range(...), "
        "interval(...) or tag(log, interval(...))."
    )


def make_sampler(name: str, seed: int | None, space: dict) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid_points(space)  # checks the space is finite; run_study enqueues the points themselves
        # Optuna's GridSampler stops the study from inside tell(), which ask-and-tell cannot use.
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"hydra.sweeper.sampler={name!r} is not a sampler; use one of {', '.join(SAMPLERS)}.")


def grid_points(space: dict) -> list[dict[str, Any]]:
    """Every combination of a finite search space, in a fixed order.

    Raises:
        UserError: a parameter is an interval.
    """
    grid = {}
    for key, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise UserError(
                f"sampler=grid needs a finite set of values, but hydra.sweeper.params.{key} is an interval; "
                "use choice(...) or range(...), or sampler=tpe."
            )
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


@dataclass
class StudySettings:
    study_name: str
    storage: str  # an SQLite URL, normally in the sweep directory
    direction: str  # minimize | maximize
    sampler: str
    pruner: str
    n_trials: int
    seed: int | None
    max_failure_rate: float
    params: dict[str, str]


# Runs one batch of trials: a list of override lists and the first job number -> each job's
# (status, value) as its summary.json tells, status being ok, pruned or failed.
LaunchBatch = Callable[[list[list[str]], int], list[tuple[str, float]]]


def run_study(settings: StudySettings, fixed: Sequence[str], launch: LaunchBatch) -> optuna.Study:
    """Ask the study for trials until ``n_trials`` have finished (this run and earlier ones together).

    Each trial runs as a job with ``fixed`` overrides, the sampled values, and the ``tuning.*`` keys
    its process needs to report to the study.

    Raises:
        UserError: more trials failed than ``max_failure_rate`` allows.
    """
    space = search_space(settings.params)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=settings.storage,
        sampler=make_sampler(settings.sampler, settings.seed, space),
        pruner=make_pruner(settings.pruner),
        direction=settings.direction,
        load_if_exists=True,
    )
    killed = mark_killed_trials(study)
    finished = len(counted_trials(study))
    if finished or killed:
        log.info(
            "Continuing study %s: %d of %d trials already done.",
            settings.study_name,
            finished,
            settings.n_trials,
        )
        if killed:
            log.warning(
                "Trials cut off by a kill before they reported (numbers %s) run again and count only once "
                "they finish; their job folders are 'killed' rows of the summary.",
                ", ".join(str(t.number) for t in killed),
            )
        if settings.seed is not None:
            # Re-seeded as it was, the sampler would draw the first run's random trials again.
            drawn = len(study.get_trials(deepcopy=False))
            study.sampler = make_sampler(settings.sampler, settings.seed + drawn, space)
    if settings.sampler == "grid":  # the grid enqueues what is left of it, killed points included
        done = [t.params for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(KILLED)]
        grid = [p for p in grid_points(space) if p not in done]
    else:
        grid = None
        for trial in killed:  # the same point again: the kill said nothing about it
            study.enqueue_trial(trial.params)
    while finished < settings.n_trials:
        if grid is not None:
            if not grid:
                break  # every point of the grid has been tried
            study.enqueue_trial(grid.pop(0))
        trial = study.ask(space)
        overrides = [
            *fixed,
            *(f"{key}={_override_value(value)}" for key, value in trial.params.items()),
            f"tuning.storage={settings.storage}",
            f"tuning.study_name={settings.study_name}",
            f"tuning.trial_id={trial._trial_id}",
            f"tuning.pruner={settings.pruner}",
        ]
        [(status, value)] = launch([overrides], trial.number)
        if status == "ok" and math.isfinite(value):
            study.tell(trial, value)
        elif status == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        finished += 1
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in counted_trials(study))
        if failed > settings.max_failure_rate * settings.n_trials:
            raise UserError(
                f"{failed} of {finished} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{settings.max_failure_rate} of {settings.n_trials} allows; see the errors in the sweep's summary.md."
            )
    _log_best(study)
    return study


KILLED = "killed"  # user attribute of a trial whose process was killed before it told the study anything


def mark_killed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Close the trials an earlier sweep left RUNNING: a SIGKILL (or a crash) stopped the process before
    it told the study, and nothing will finish them.

    They are told FAIL, the only way to close a trial, with the user attribute ``killed``, so that they
    count neither towards ``n_trials`` nor ``max_failure_rate``; their job folders, without a
    summary.json, are the sweep summary's ``killed`` rows. Assumes no other process is running trials
    of the study at the same time (one sweep per study).

    Returns:
        The trials closed, whose parameters the caller runs again.
    """
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(KILLED, True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return stale


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that used up one of ``n_trials``: finished, and not cut off by a kill."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get(KILLED)]


class TrialReporter:
    """A trial's side: report the objective after each epoch, and ask whether to stop (prune)."""

    def __init__(self, storage: str, study_name: str, trial_id: int, pruner: str, monitor: str) -> None:
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
        self.trial = optuna.trial.Trial(study, trial_id)
        self.monitor = monitor

    def should_prune(self, epoch: int, value: float) -> bool:
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        return self.trial.should_prune()


def job_outcome(job_dir: Path) -> tuple[str, float]:
    """(status, objective value) from a job's summary.json; failed when it wrote none."""
    path = job_dir / "summary.json"
    if not path.exists():
        return "failed", math.nan
    summary = json.loads(path.read_text())
    value = summary.get("objective_value")
    return summary.get("status", "failed"), float(value) if isinstance(value, int | float) else math.nan


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _log_best(study: optuna.Study) -> None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.warning("No trial of study %s completed.", study.study_name)
        return
    best = study.best_trial
    log.info("Best trial %d: %s = %.6g with %s", best.number, "objective", best.value, best.params)

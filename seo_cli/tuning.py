"""Hyperparameter search with Optuna inside a Hydra sweep: the search space, samplers, pruners, the loop.

    seo-train hparams_search=optuna                                   # TPE over conf/hparams_search/optuna.yaml
    seo-train hparams_search=optuna hydra.sweeper.n_trials=50 hydra.sweeper.sampler=random
    seo-train hparams_search=optuna hydra.sweep.dir=<an earlier sweep>   # continue that study
    seo-train hparams_search=optuna hydra.sweeper.n_jobs=4            # 4 trials at once, 4 processes
    seo-train hparams_search=optuna hydra.sweeper.storage=postgresql://db/tuning   # on each machine

By default the study lives in SQLite in the sweep directory, so re-running the command on the same
directory continues it; ``hydra.sweeper.storage`` puts it in any Optuna storage (seo_cli/study_storage.py),
which any number of sweeps, on any machines, then share. Each trial is one seo-train job; it reports its
validation objective after every epoch to the study (``TrialReporter``) and stops early when the pruner
says so. The Hydra plugin in ``hydra_plugins/seo_optuna_sweeper`` is a thin shim over ``run_study``.
"""

import itertools
import json
import logging
import math
import os
import queue
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from seo_cli.errors import UserError, require
from seo_cli.study_storage import claim_lock, open_storage

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
    storage: str  # an Optuna storage (seo_cli/study_storage.py); by default SQLite in the sweep directory
    direction: str  # minimize | maximize
    sampler: str
    pruner: str
    n_trials: int
    seed: int | None
    max_failure_rate: float
    params: dict[str, str]
    n_jobs: int = 1  # trials at once from this process


# Runs one batch of trials: a list of override lists and the first job number -> each job's
# (status, value) as its summary.json tells, status being ok, pruned or failed.
LaunchBatch = Callable[[list[list[str]], int], list[tuple[str, float]]]


def run_study(settings: StudySettings, fixed: Sequence[str], launch: LaunchBatch) -> optuna.Study:
    """Ask the study for trials until ``n_trials`` have been started (by this process, earlier runs and
    other processes sharing the storage together), ``n_jobs`` at a time, and tell it how each ended.

    Each trial runs as a job with ``fixed`` overrides, the sampled values, and the ``tuning.*`` keys
    its process needs to report to the study. With ``n_jobs`` above 1, ``launch`` is called from that
    many threads at once (each waits on a trial's own process).

    Raises:
        UserError: the storage cannot be used, or more trials failed than ``max_failure_rate`` allows.
    """
    require(
        isinstance(settings.n_jobs, int) and settings.n_jobs >= 1,
        f"hydra.sweeper.n_jobs={settings.n_jobs} must be a whole number of at least 1 (trials run at once).",
    )
    space = search_space(settings.params)
    make_sampler(settings.sampler, settings.seed, space)  # a bad name fails before the storage is touched
    storage = open_storage(settings.storage)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        sampler=make_sampler(settings.sampler, settings.seed, space),
        pruner=make_pruner(settings.pruner),
        direction=settings.direction,
        load_if_exists=True,
    )
    if study.get_trials(deepcopy=False):
        log.info(
            "Continuing study %s: %d of %d trials already done.",
            settings.study_name,
            len(counted_trials(study)),
            settings.n_trials,
        )
    me = this_worker()

    def claim() -> optuna.trial.Trial | None:
        with claim_lock(settings.storage, storage, settings.study_name):
            return claim_trial(study, storage, settings, space, me)

    running: dict[Future, optuna.trial.Trial] = {}
    stop: UserError | None = None
    pool = ThreadPoolExecutor(settings.n_jobs) if settings.n_jobs > 1 else None
    with Heartbeat(storage) as heartbeat, pool or nullcontext():
        while True:
            while stop is None and len(running) < settings.n_jobs and (trial := claim()) is not None:
                overrides = [
                    *fixed,
                    *(f"{key}={_override_value(value)}" for key, value in trial.params.items()),
                    f"tuning.storage={quoted(settings.storage)}",  # a URL's ?key=value needs the quotes
                    f"tuning.study_name={settings.study_name}",
                    f"tuning.trial_id={trial._trial_id}",
                    f"tuning.pruner={settings.pruner}",
                ]
                heartbeat.trial_ids.add(trial._trial_id)
                # One at a time, the job runs here, in this thread (Hydra's launcher installs signal handlers).
                submit = pool.submit if pool else _run_now
                running[submit(launch, [overrides], trial.number)] = trial
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                trial = running.pop(future)
                heartbeat.trial_ids.discard(trial._trial_id)
                tell(study, trial, *future.result()[0])
            counted = counted_trials(study)
            failed = sum(t.state == optuna.trial.TrialState.FAIL for t in counted)
            if stop is None and failed > settings.max_failure_rate * settings.n_trials:
                # The trials still running finish and are told first: nothing is left RUNNING.
                stop = UserError(
                    f"{failed} of {len(counted)} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{settings.max_failure_rate} of {settings.n_trials} allows; see the errors in the sweep's summary.md."
                )
    if stop is not None:
        raise stop
    _log_best(study)
    return study


def tell(study: optuna.Study, trial: optuna.trial.Trial, status: str, value: float) -> None:
    """Tell the study how a job ended: ok with a finite value, pruned, or failed."""
    try:
        if status == "ok" and math.isfinite(value):
            study.tell(trial, value)
        elif status == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # Optuna's words for "already closed"
        log.warning(
            "Trial %d was closed by another process of the study, which took it for abandoned (no "
            "heartbeat for %d s); its result is in its job folder but not in the study.",
            trial.number,
            STALE_AFTER_S,
        )


def claim_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    settings: StudySettings,
    space: dict[str, optuna.distributions.BaseDistribution],
    me: dict[str, Any],
) -> optuna.trial.Trial | None:
    """This process's next trial, or None when the study has its ``n_trials``; under ``claim_lock``.

    Closes the trials that nothing runs any more first, and enqueues their points again.
    """
    killed = close_abandoned_trials(study, me)
    if killed:
        log.warning(
            "Trials cut off by a kill before they reported (numbers %s) run again and count only once "
            "they finish; their job folders are 'killed' rows of the summary.",
            ", ".join(str(t.number) for t in killed),
        )
    trials = study.get_trials(deepcopy=False)
    live = [t for t in trials if not t.user_attrs.get(KILLED)]
    if sum(t.state != optuna.trial.TrialState.WAITING for t in live) >= settings.n_trials:
        return None
    if settings.sampler == "grid":  # what is left of the grid, killed points included
        taken = [t.params for t in live]
        left = [p for p in grid_points(space) if p not in taken]
        if not left:
            return None  # every point of the grid has been tried
        study.enqueue_trial(left[0])
    else:
        for trial in killed:  # the same point again: the kill said nothing about it
            study.enqueue_trial(trial.params)
    if settings.seed is not None:
        # A seed of its own for each trial: processes sharing the study, and a rerun, draw new points.
        study.sampler = make_sampler(settings.sampler, settings.seed + len(trials), space)
    trial = study.ask(space)
    storage.set_trial_system_attr(trial._trial_id, WORKER, me)
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, time.time())
    return trial


KILLED = "killed"  # user attribute of a trial whose process was killed before it told the study anything
WORKER = "seo:worker"  # system attribute: host, pid and start time of the sweep process running the trial
HEARTBEAT = "seo:heartbeat"  # system attribute: when that process last said it is alive (time.time())
JOB_DIR = "seo:job_dir"  # system attribute: host and folder of the trial's job, written by the job
HEARTBEAT_S = 60
STALE_AFTER_S = 600  # a trial without a heartbeat this long is abandoned, whichever machine ran it


def this_worker() -> dict[str, Any]:
    """Who asks for a trial: this machine, process and ``run_study`` call."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start(pid), "run": uuid.uuid4().hex}


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), which tells it from a later process given
    the same pid; None where there is no /proc, or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces


def is_abandoned(trial: optuna.trial.FrozenTrial, me: dict[str, Any], now: float) -> bool:
    """A RUNNING trial that no process will finish: its sweep process is gone, or silent for too long."""
    worker = trial.system_attrs.get(WORKER)
    if not isinstance(worker, dict):
        return True  # not asked for by a sweep (every sweep marks its trials under the claim lock)
    if now - trial.system_attrs.get(HEARTBEAT, 0) > STALE_AFTER_S:
        return True
    if worker.get("host") != me["host"]:
        return False  # alive as far as can be told from here: its heartbeat is recent
    if worker.get("pid") == me["pid"]:
        return worker.get("run") != me["run"]  # a trial of an earlier run_study in this process, cut off
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process, alive
    started = worker.get("started")
    return started is not None and process_start(worker["pid"]) != started  # the pid is another process's now


def close_abandoned_trials(study: optuna.Study, me: dict[str, Any]) -> list[optuna.trial.FrozenTrial]:
    """Close the RUNNING trials that nothing will finish (``is_abandoned``): a SIGKILL, a crash or a lost
    machine stopped their sweep process before it told the study.

    They are told FAIL, the only way to close a trial, with the user attribute ``killed``, so that they
    count neither towards ``n_trials`` nor ``max_failure_rate``; their job folders, without a
    summary.json, are the sweep summary's ``killed`` rows.

    Returns:
        The trials closed, whose parameters the caller runs again.
    """
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    stale = [t for t in running if is_abandoned(t, me, now)]
    for trial in stale:
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(KILLED, True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return stale


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that used up one of ``n_trials``: finished, and not cut off by a kill."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get(KILLED)]


class Heartbeat:
    """Every ``HEARTBEAT_S`` seconds, in a thread, tells the study that this process still runs the
    trials in ``trial_ids``: how other machines tell a long trial from one whose machine was lost."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage, self.trial_ids = storage, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for trial_id in list(self.trial_ids):
                try:
                    self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
                except optuna.exceptions.UpdateFinishedTrialError:
                    self.trial_ids.discard(trial_id)
                except Exception as err:  # noqa: BLE001 - a lost connection: the next beat tries again
                    log.warning("Could not record the heartbeat of trial id %d: %s", trial_id, err)


class TrialReporter:
    """A trial's side: report the objective after each epoch, and ask whether to stop (prune)."""

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_id: int,
        pruner: str,
        monitor: str,
        job_dir: Path | None = None,
    ) -> None:
        backend = open_storage(storage)
        study = optuna.load_study(study_name=study_name, storage=backend, pruner=make_pruner(pruner))
        self.trial = optuna.trial.Trial(study, trial_id)
        self.monitor = monitor
        if job_dir is not None:  # where the trial's files are, for a summary rebuilt from the storage
            backend.set_trial_system_attr(
                trial_id, JOB_DIR, {"host": socket.gethostname(), "path": str(job_dir.absolute())}
            )

    def should_prune(self, epoch: int, value: float) -> bool:
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        return self.trial.should_prune()


class TrialProcesses:
    """``hydra.sweeper.n_jobs`` above 1: each trial runs as its own ``python -m seo_cli.train`` process (a
    job of its own: ``<sweep dir>/<trial number>``, its console output in ``console.log`` there), on a
    slot of GPUs of its own (``CUDA_VISIBLE_DEVICES``). Called from ``n_jobs`` threads at once."""

    def __init__(self, command: list[str], sweep_dir: Path, slots: list[list[str]], threads: int) -> None:
        self.command, self.sweep_dir, self.threads = command, sweep_dir, threads
        self.free: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        for slot in slots:
            self.free.put(slot)
        self.running: set[subprocess.Popen] = set()
        self.stopped: int | None = None  # the signal passed on to the trials; none start after it
        self._lock = threading.Lock()

    def __call__(self, batch: list[list[str]], first_job: int) -> list[tuple[str, float]]:
        [overrides] = batch
        job_dir = self.sweep_dir / str(first_job)
        job_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # Each trial's share of the cores, unless the user set the pools' size.
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        slot = self.free.get()
        if slot:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
        log.info("Trial %d started in %s%s", first_job, job_dir, f" on GPU {','.join(slot)}" if slot else "")
        argv = [*self.command, *overrides, "hydra.mode=RUN", f"hydra.run.dir={quoted(str(job_dir))}"]
        try:
            with open(job_dir / "console.log", "wb") as console, self._lock:
                if self.stopped is not None:
                    return [("failed", math.nan)]
                process = subprocess.Popen(argv, env=env, stdout=console, stderr=subprocess.STDOUT)
                self.running.add(process)
            process.wait()
            with self._lock:
                self.running.discard(process)
        finally:
            self.free.put(slot)
        status, value = job_outcome(job_dir)
        log.info("Trial %d ended: %s, objective %.6g", first_job, status, value)
        return [(status, value)]

    def pass_on(self, signum: int, frame: object = None) -> None:
        """The sweep's handler of SIGTERM: the trials get it too (they save ``last.pt`` and stop, as on
        their own SIGTERM), no new one starts, and the sweep ends with 128 + signum once they have. Their
        trials stay unfinished in the study, to be run again by the next sweep on it."""
        with self._lock:
            self.stopped = signum
            for process in self.running:
                process.send_signal(signum)
        raise SystemExit(128 + signum)


def visible_gpus(environ: Mapping[str, str], device_count: int) -> list[str]:
    """The ids of the GPUs this process may give out: ``CUDA_VISIBLE_DEVICES``'s entries where it is set
    (torch counted ``device_count`` of them), else 0 .. device_count - 1."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in listed.split(",")] if listed else [str(i) for i in range(device_count)]
    return ids[:device_count]


def trial_slots(
    n_jobs: int,
    device_type: str,
    strategy: str,
    num_devices: int,
    environ: Mapping[str, str],
    device_count: int,
) -> list[list[str]]:
    """The GPUs of each of ``n_jobs`` trials at once, for a trial's ``device`` config: one GPU, or
    ``device.num_devices`` under ``device=ddp``; none for ``device.type=cpu``.

    Raises:
        UserError: fewer GPUs than ``n_jobs`` trials need.
    """
    visible = [] if device_type == "cpu" else visible_gpus(environ, device_count)
    return gpu_slots(visible, n_jobs, num_devices if strategy == "ddp" else 1)


def gpu_slots(visible: Sequence[str], n_jobs: int, per_trial: int) -> list[list[str]]:
    """The GPUs of each of ``n_jobs`` trials running at once, ``per_trial`` each (``device.num_devices``
    for a DDP trial, else 1), none shared; empty slots on a machine without GPUs.

    Raises:
        UserError: fewer GPUs than ``n_jobs`` trials need.
    """
    if not visible:
        return [[] for _ in range(n_jobs)]
    fits = len(visible) // per_trial
    if fits < 1:
        raise UserError(
            f"device.num_devices={per_trial} but {len(visible)} GPU(s) are visible; use device.num_devices={len(visible)} or fewer."
        )
    if n_jobs > fits:
        raise UserError(
            f"hydra.sweeper.n_jobs={n_jobs} trials at once with {per_trial} GPU(s) each need {n_jobs * per_trial} "
            f"GPUs and {len(visible)} are visible; use hydra.sweeper.n_jobs={fits} or fewer."
        )
    return [list(visible[i * per_trial : (i + 1) * per_trial]) for i in range(n_jobs)]


def job_outcome(job_dir: Path) -> tuple[str, float]:
    """(status, objective value) from a job's summary.json; failed when it wrote none."""
    path = job_dir / "summary.json"
    if not path.exists():
        return "failed", math.nan
    summary = json.loads(path.read_text())
    value = summary.get("objective_value")
    return summary.get("status", "failed"), float(value) if isinstance(value, int | float) else math.nan


def _run_now(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` called here and now, as a finished future."""
    future: Future = Future()
    future.set_result(fn(*args))
    return future


def quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar, read back unchanged whatever it holds."""
    # Hydra reads a backslash as an escape only in front of a quote (or the closing one): double those.
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _log_best(study: optuna.Study) -> None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.warning("No trial of study %s completed.", study.study_name)
        return
    best = study.best_trial
    log.info("Best trial %d: %s = %.6g with %s", best.number, "objective", best.value, best.params)

"""How a training job runs as processes: its outcome (exit code, summary status), the lock on its run
directory, and DDP workers started and watched on this machine.

``seo-train device=ddp device.num_devices=N``: the Hydra process checks the config, freezes it into the
run directory and starts N workers through ``torch.distributed.run``'s elastic launcher. Workers read
that file and never parse the command line, so a multirun's sweep is not relaunched in each rank: every
sweep job starts and ends its own process group. On several machines ``torchrun`` starts
``python -m seo_cli.train ... hydra.run.dir=<shared dir>`` on each, and each process trains as its rank.
"""

import fcntl
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from seo_cli import distributed, scheduler
from seo_cli.errors import UserError

if TYPE_CHECKING:
    from seo_cli.trainer import TrainingInterrupted

log = logging.getLogger(__name__)

FROZEN_CONFIG = "ddp_config.yaml"  # the resolved config the workers read, in the run directory's .hydra/
LOCK_FILE = ".seo-train.lock"


@dataclass
class Job:
    """One seo-train run (or sweep job) as a process sees it: where it writes, how it was asked for,
    and how it ended. ``outcome()`` turns what can go wrong into a log line, a summary status and a code."""

    run_dir: Path
    overrides: list[str]
    multirun: bool = False
    summary: dict | None = None
    code: int = 0
    objective: float | None = None
    locks: bool = True  # take the run directory's lock (not in workers, whose launcher holds it)
    _held: list[Any] = field(default_factory=list)

    @classmethod
    def from_hydra(cls) -> "Job":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        # A trial of an Optuna sweep run in a process of its own (hydra.sweeper.n_jobs) is a sweep job too.
        trial = any(o.startswith("tuning.trial_id=") for o in overrides)
        return cls(
            Path(hydra_cfg.runtime.output_dir),
            overrides,
            multirun=hydra_cfg.mode == RunMode.MULTIRUN or trial,
        )

    @contextmanager
    def outcome(self, cfg: DictConfig) -> Iterator["Job"]:
        """Around one training process (a DDP rank joins its process group first).

        0 and the objective; 1 and NaN for a user error (a sweep goes on); 128 + signal number for an
        interrupted run. Outside a sweep our own bugs keep their traceback; in a sweep they are a row.
        A submitit job stopped by the scheduler's pre-emption warning is requeued (``requeue``).
        """
        from seo_cli.evaluation import TrainingDiverged  # noqa: F401 - a UserError, named for the reader
        from seo_cli.trainer import TrainingInterrupted

        worker = distributed.in_worker()
        try:
            # Under submitit the scheduler started one task per DDP rank: this one trains as its rank.
            joined = scheduler.join_ranks(cfg.device.strategy, cfg.device.num_devices)
            worker = worker or joined
            if worker:
                distributed.init_process_group(cfg.device.type, cfg.device.timeout_s)
                if not distributed.is_main():
                    logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story; the others only warn
                if joined and not distributed.is_main():  # to the task's own output, not rank 0's train.log
                    _worker_logging(self.run_dir, distributed.rank())
            with self.lock() if self.locks and distributed.is_main() else _nothing():
                yield self
            self.summary = {**(self.summary or {}), "overrides": self.overrides}
            self.objective = self.summary.get("objective_value")
            self._write(self.summary)
        except TrainingInterrupted as stop:
            self.code = 128 + stop.signum
            if not scheduler.is_preemption(stop.signum) or self.requeue(stop) is not None:
                where = f"{stop.checkpoint} is saved" if stop.checkpoint else "no checkpoint was written"
                log.error("%s; %s. Resume with: %s", stop, where, resume_command(self.overrides, self.run_dir))
                self._write({"status": "interrupted", "error": str(stop), "overrides": self.overrides})
        except UserError as err:
            log.error("%s", err)
            self._write({"status": "failed", "error": str(err).splitlines()[0], "overrides": self.overrides})
            self.code, self.objective = 1, float("nan")
        except Exception as err:
            if worker and distributed.is_collective_failure(err):
                # Another rank died or hung: the launcher names it; this rank only says it stopped.
                log.error("DDP rank %d stopped: it lost contact with another rank (%s).", distributed.rank(), _first_line(err))
                self.code, self.objective = 1, float("nan")
            elif not self.multirun:
                raise
            else:  # in a sweep the other jobs still run; the traceback goes to this job's log
                log.exception("The job failed")
                self._write({"status": "failed", "error": f"{type(err).__name__}: {_first_line(err)}", "overrides": self.overrides})
                self.code, self.objective = 1, float("nan")
        finally:
            if worker:
                distributed.destroy()

    def finish(self) -> float | None:
        """The entrypoint's return: the objective for a sweep; a failed or interrupted single run exits.

        A signal ends the whole sweep of this process, except in a submitit job: there the sweep runs
        elsewhere and the job's return value is its row in the sweep's table.
        """
        if (self.code >= 128 and not scheduler.in_job()) or (self.code and not self.multirun):
            sys.exit(self.code)  # a user error in a sweep is a row in the sweep's table, not the end of the sweep
        return self.objective if self.code < 128 else float("nan")

    def requeue(self, stop: "TrainingInterrupted") -> str | None:
        """Hand the scheduler's pre-emption warning, which stopped the loop once ``last.pt`` was written,
        to submitit: on rank 0 it requeues the job (the same job directory, ``resume=auto``) and exits.

        Returns:
            None on the other ranks (rank 0 requeues the job); submitit's reason when it would not requeue.
        """
        if distributed.is_main():
            log.warning(
                "Pre-empted at step %d; %s is saved. Requeueing the job: it continues from there with resume=auto in %s.",
                stop.global_step,
                stop.checkpoint,
                self.run_dir,
            )
            self._write({"status": "requeued", "error": str(stop), "overrides": self.overrides})
        refused = scheduler.requeue(stop.signum)  # a requeue exits here
        if refused is not None:
            log.error("submitit did not requeue the job: %s", refused)
        return refused

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process: a second seo-train on it (``resume=auto`` twice, say)
        stops with the first one's pid. ``flock``: a killed process releases it.

        Raises:
            UserError: another process holds the directory.
        """
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(
                f"cannot create the run directory {self.run_dir}: {err.strerror or err}; set hydra.run.dir to a writable path."
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise UserError(
                    f"run directory {self.run_dir} is in use by another seo-train (process {holder}); wait for it "
                    "to finish or stop it, or give this run another hydra.run.dir."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, summary: dict) -> None:
        if distributed.is_main():
            from seo_cli.train import write_summary

            write_summary(self.run_dir, summary)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The seo-train command that continues the run in ``run_dir`` from its last checkpoint."""
    kept = [o for o in overrides if not o.startswith(("resume=", "hydra.run.dir="))]
    return " ".join(["seo-train", *kept, f"hydra.run.dir={run_dir}", "resume=auto"])


def start_workers(cfg: DictConfig, job: Job) -> None:
    """Check the config, freeze it into the run directory and run it on ``device.num_devices`` workers,
    holding the run directory's lock for them; sets ``job``'s code and objective from rank 0's summary."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    run_dir, overrides = job.run_dir, job.overrides
    summary_path = run_dir / "summary.json"
    try:
        with job.lock():
            check_workers(cfg)
            (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            (run_dir / ".hydra" / FROZEN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
            if not (run_dir / ".hydra" / "overrides.yaml").exists():
                OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
            log.info("Starting %d DDP workers for %s", cfg.device.num_devices, run_dir)
            summary_path.unlink(missing_ok=True)
            _elastic_launch(run_dir, cfg.device.num_devices, cfg.device.timeout_s)
        summary = json.loads(summary_path.read_text())
        job.code, job.objective = 0, summary["objective_value"]
    except UserError as err:
        log.error("%s", err)
        job._write({"status": "failed", "error": str(err).splitlines()[0], "overrides": overrides})
        job.code, job.objective = 1, float("nan")
    except SignalException as err:  # Ctrl-C or SIGTERM to this process: the launcher passed it to the workers
        last = run_dir / "checkpoints" / "last.pt"
        log.error(
            "stopped by %s; %s. Resume with: %s",
            err.sigval.name,
            f"{last} holds the last saved position" if last.exists() else "no checkpoint was written",
            resume_command(overrides, run_dir),
        )
        job.code = 128 + int(err.sigval)
    except ChildFailedError as err:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        job.code, job.objective = 1, float("nan")
        if summary.get("status") == "interrupted":
            job.code, job.objective = err.get_first_failure()[1].exitcode, None
        elif summary.get("status") != "failed":  # a worker died without a word: say which one
            last = run_dir / "checkpoints" / "last.pt"
            after = f"; resume from its last checkpoint with: {resume_command(overrides, run_dir)}" if last.exists() else ""
            message = f"{describe_failure(err)}, so the job was stopped{after}."
            log.error("%s", message)
            job._write({"status": "failed", "error": message, "overrides": overrides})


def check_workers(cfg: DictConfig) -> None:
    """The config and the machine can run ``device.num_devices`` workers.

    Raises:
        UserError: a config problem, or more GPUs asked for than the machine has.
    """
    import torch

    from seo_cli.validation import check_train_config

    check_train_config(cfg)
    gpus = torch.cuda.device_count()
    if cfg.device.type == "cuda" and not gpus:
        raise UserError("device=ddp with device.type=cuda needs a GPU and this machine has none; use device.type=cpu.")
    if cfg.device.type != "cpu" and gpus and cfg.device.num_devices > gpus:
        raise UserError(
            f"device.num_devices={cfg.device.num_devices} but this machine has {gpus} GPU(s); "
            f"use device.num_devices={gpus} or fewer (one process per GPU)."
        )


def _elastic_launch(run_dir: Path, num_devices: int, timeout_s: float) -> None:
    """Start ``num_devices`` workers on this machine through torch.distributed.run and wait for them.

    Raises:
        ChildFailedError: a worker exited non-zero; the launcher stopped the others.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher logs each worker's exit in its own words; the caller says what failed in one sentence.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_devices,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone picks
        rdzv_timeout=int(timeout_s),
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    # `-c`, not `-m`: the worker's first seo_cli frame is `worker` itself.
    elastic_launch(config, sys.executable)("-c", "from seo_cli.launch import worker; worker()", str(run_dir))


def worker() -> None:
    """A DDP worker started by ``start_workers``: train as this rank on the run directory's frozen config."""
    from seo_cli.config import TrainConfig
    from seo_cli.train import train

    run_dir = Path(sys.argv[-1])
    _worker_logging(run_dir, int(os.environ["RANK"]))
    # Typed by the schema again, as Hydra's composition types it.
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(run_dir / ".hydra" / FROZEN_CONFIG))
    overrides = list(OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")))
    job = Job(run_dir, overrides, locks=False)  # the launching process holds the lock
    with job.outcome(cfg):
        job.summary = train(cfg, run_dir)
    sys.exit(job.code)


def describe_failure(error: Exception) -> str:
    """'DDP worker rank 1 (pid 123) was killed by SIGKILL': the worker whose failure started it all.

    When one worker dies the others fail too (a collective loses its peer) or are stopped by the
    launcher (SIGTERM); a death by another signal, then a rank other than 0, is the likelier cause.
    """

    def blame(item: tuple[int, Any]) -> tuple[bool, bool, int]:
        rank_, failure = item
        by_signal = failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM
        return (not by_signal, rank_ == 0, rank_)

    failed_rank, failure = min(error.failures.items(), key=blame)
    code = failure.exitcode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return f"DDP worker rank {failed_rank} (pid {failure.pid}) {how}"


def _worker_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 logs as the Hydra process does (console and train.log); other ranks only warnings."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    prefix = "" if rank == 0 else f"[rank {rank}]"
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s][%(name)s][%(levelname)s]{prefix} - %(message)s",
        handlers=handlers,
        force=True,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__

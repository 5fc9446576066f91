"""hydra-submitit-launcher's SLURM and local launchers, with one change: a pre-empted or timed-out job is
requeued with ``resume=auto``, so it continues from the ``last.pt`` it wrote in its job directory (and so
does a job SLURM requeued by itself).

submitit pickles the launcher with each job and, on the scheduler's warning signal, calls its
``checkpoint`` for the submission to requeue: upstream's resubmits the same overrides, which would train
the job again from the start. Everything else (the executor, the job arrays, where jobs write) is
upstream's. See seo_cli/scheduler.py for the job's side.
"""

import os
from typing import Any

from hydra.plugins.launcher import Launcher

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as upstream
except ImportError:  # hydra-submitit-launcher is not installed: the launchers below say how to get it
    upstream = None


class MissingSubmitit(Launcher):
    """Stands in for hydra-submitit-launcher where it is not installed."""

    def __init__(self, **params: Any) -> None:
        # SystemExit: one sentence where Hydra would print a traceback.
        raise SystemExit(
            "hydra/launcher=submitit_slurm and submitit_local need hydra-submitit-launcher; install it with: "
            "pip install 'seo-cli[slurm]'."
        )

    def setup(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        raise NotImplementedError


class ResumeOnRequeue:
    """The requeued submission: the same job (number, directory, overrides) with ``resume=auto``."""

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        overrides = [o for o in sweep_overrides if not o.startswith("resume=")] + ["resume=auto"]
        return super().checkpoint(overrides, *args, **kwargs)

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        # A job SLURM requeued on its own (its node failed; a pre-emption without the warning signal) runs
        # the first submission again: it continues from the checkpoints of its run directory too, instead
        # of training over them. A resume= the job was given is kept.
        restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
        if restarted and not any(o.startswith("resume=") for o in sweep_overrides):
            sweep_overrides = [*sweep_overrides, "resume=auto"]
        return super().__call__(sweep_overrides, *args, **kwargs)


class SlurmLauncher(ResumeOnRequeue, upstream.SlurmLauncher if upstream else MissingSubmitit):
    pass


class LocalLauncher(ResumeOnRequeue, upstream.LocalLauncher if upstream else MissingSubmitit):
    pass

"""A sweep job run by a cluster scheduler through submitit (``hydra/launcher=submitit_slurm`` or
``submitit_local``): its DDP ranks, and what it does when the scheduler warns it off the machine.

Ranks: under ``device=ddp`` SLURM (or submitit's local executor) starts the job's tasks, one per rank,
each running the sweep job itself; a task becomes its rank by setting torch.distributed's variables from
the scheduler's, instead of starting DDP workers of its own (``seo_cli.launch``).

Pre-emption: SLURM sends the warning signal (SIGUSR2, ``hydra.launcher.signal_delay_s`` before the
time limit, or on pre-emption) to every task. The training loop answers it as it answers SIGTERM
outside submitit: it finishes its step and writes ``last.pt``. The job then hands the signal to
submitit's handler, which requeues it through the launcher's ``checkpoint`` (with ``resume=auto``, in
the same job directory, see hydra_plugins/seo_submitit_launcher) and exits.

Imports nothing of submitit outside a submitit job; light enough for the training loop to import.
"""

import os
import signal
import zlib
from collections.abc import Mapping
from typing import Any

from seo_cli.errors import UserError


def in_job() -> bool:
    """True in a task that submitit started (it sets ``SUBMITIT_EXECUTOR`` to slurm or local)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def check_submitted(launcher: str, multirun: bool) -> None:
    """Raises:
    UserError: a submitit launcher (``hydra/launcher=`` choice ``launcher``) was chosen for a single run,
        which Hydra runs on this machine: launchers run the jobs of a multirun only.
    """
    if launcher.startswith("submitit_") and not multirun:
        raise UserError(
            f"hydra/launcher={launcher} submits the jobs of a multirun, so this single run would train on "
            f"this machine; add -m: seo-train -m hydra/launcher={launcher} ..."
        )


def preemption_signal() -> signal.Signals:
    """The scheduler's warning signal as submitit names it: SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL``
    says otherwise (the same variable sets ``sbatch --signal``)."""
    return signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"]


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals the training loop answers by writing ``last.pt`` and stopping.

    SIGTERM and SIGINT; in a submitit job SIGINT and the pre-emption warning instead of SIGTERM, which
    SLURM sends ahead of the warning on pre-emption and submitit ignores: stopping there would end the
    job before the warning could requeue it.
    """
    if in_job():
        return signal.SIGINT, preemption_signal()
    return signal.SIGTERM, signal.SIGINT


def is_preemption(signum: int) -> bool:
    """``signum`` stopped the loop because the scheduler wants the machine back (not a Ctrl-C)."""
    return in_job() and signum == preemption_signal()


def requeue(signum: int) -> str | None:
    """Hand the pre-emption signal, held back while ``last.pt`` was written, to submitit's handler.

    On the job's task of global rank 0 it calls the launcher's ``checkpoint`` (the same job with
    ``resume=auto``), requeues the job and exits the process (SystemExit). On the other tasks it returns:
    the requeue ends them (SLURM), or they stop on their own (the local executor waits for every task).

    Returns:
        None on the other tasks; submitit's reason when it would not requeue (the job ran into
        ``timeout_min`` more than ``hydra.launcher.max_num_timeout`` times).
    """
    from submitit.core.utils import UncompletedJobError

    try:
        signal.raise_signal(signum)  # Python runs the handler before raise_signal returns
    except UncompletedJobError as err:
        return str(err)
    return None


def join_ranks(strategy: str, num_devices: int, environ: Any = os.environ) -> bool:
    """In a submitit job under ``device=ddp``: set this task's rank in ``environ`` (torch.distributed's
    ``env://`` variables) so the process trains as that rank. Returns True then, False outside a submitit
    job or without DDP.

    Raises:
        UserError: the job's tasks do not match the config: several tasks per node without ``device=ddp``,
            or a number other than ``device.num_devices`` under it.
    """
    if not in_job():
        return False
    import submitit

    job = submitit.JobEnvironment()
    per_node = job.num_tasks // job.num_nodes
    if strategy != "ddp":
        if job.num_tasks > 1:
            raise UserError(
                f"hydra.launcher.tasks_per_node={per_node} starts {job.num_tasks} copies of a one-process run; "
                "set hydra.launcher.tasks_per_node=1, or train on several devices with device=ddp."
            )
        return False
    if per_node != num_devices:
        raise UserError(
            f"device.num_devices={num_devices} but the job has {per_node} task(s) per node, one per DDP rank; "
            f"set hydra.launcher.tasks_per_node={num_devices} (the default) or device.num_devices={per_node}."
        )
    environ.update(rank_environment(job, environ))
    return True


def rank_environment(job: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables for this task of a submitit job.

    Args:
        job: submitit's ``JobEnvironment`` (SLURM's reads SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS,
            SLURM_JOB_NUM_NODES and SLURM_JOB_NODELIST; the local executor's its own).
        environ: the process's environment; a MASTER_ADDR or MASTER_PORT already there is kept.

    Returns:
        RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR (the job's first node; the loopback
        address in a one-node job) and MASTER_PORT (the same in every task, from the job id, so that two
        jobs on one node differ).
    """
    return {
        "RANK": str(job.global_rank),
        "LOCAL_RANK": str(job.local_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or (job.hostnames[0] if job.num_nodes > 1 else "127.0.0.1"),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(master_port(job.job_id)),
    }


def master_port(job_id: str) -> int:
    """A port for rank 0's rendezvous that every task of the job computes alike: 15000-29999, below
    Linux's ephemeral range (32768 and up), where the kernel picks ports for outgoing connections."""
    return 15000 + zlib.crc32(job_id.encode()) % 15000

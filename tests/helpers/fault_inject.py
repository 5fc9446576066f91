"""Run seo-train and hit it with a fault at an exact point, as a crash or an operator would.

    python tests/helpers/fault_inject.py --kill-at-step 60 -- debug=smoke epochs=4 hydra.run.dir=...
    python tests/helpers/fault_inject.py --signal-at-step 40 --signal SIGTERM -- ...
    python tests/helpers/fault_inject.py --kill-in-save 3 -- ...

``--kill-at-step N`` sends SIGKILL once N optimizer steps are done (before step N+1's forward pass);
``--signal-at-step`` sends the named signal there instead, which the trainer handles (with
``--signal-again-in-save``, once more as the checkpoint that signal asked for is being written);
``--kill-in-save K`` sends SIGKILL half-way through writing the K-th checkpoint file, after half its
bytes hit the disk.

Tests use ``injected`` in their own process (signals, which the trainer handles in the main thread) and
``train_in_child`` for SIGKILL: a forked child of the test process, which has torch and seo_cli imported
already, so it starts training at once instead of spending seconds on imports as a new interpreter does.
Test code only: the faults are injected by wrapping functions, seo_cli has no hooks for them.
"""

import argparse
import contextlib
import io
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import seo_cli.cli
import seo_cli.trainer


@contextmanager
def injected(
    kill_at_step: int | None = None,
    signal_at_step: int | None = None,
    signal_name: str = "SIGTERM",
    kill_in_save: int | None = None,
    signal_again_in_save: bool = False,
) -> Iterator[None]:
    """``seo_cli.trainer.forward_backward`` and ``torch.save`` wrapped with the faults asked for, counted
    from the first call inside the block; the originals are put back after it."""
    forward_backward = seo_cli.trainer.forward_backward
    windows = iter(range(1, 10**9))
    signalled: list[int] = []

    def faulty_forward_backward(*a, **kw):
        window = next(windows)  # 1-based: window N+1 starts once N optimizer steps are done
        if kill_at_step is not None and window == kill_at_step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if signal_at_step is not None and window == signal_at_step + 1:
            os.kill(os.getpid(), signal.Signals[signal_name])
            signalled.append(window)
        return forward_backward(*a, **kw)

    save = torch.save
    saves = iter(range(1, 10**9))

    def faulty_save(obj, f, *a, **kw):
        if signal_again_in_save and signalled:  # the save the first signal asked for: signal again
            signalled.clear()
            os.kill(os.getpid(), signal.Signals[signal_name])
        if next(saves) != kill_in_save:
            return save(obj, f, *a, **kw)
        buffer = io.BytesIO()
        save(obj, buffer, *a, **kw)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    seo_cli.trainer.forward_backward = faulty_forward_backward
    torch.save = faulty_save
    try:
        yield
    finally:
        seo_cli.trainer.forward_backward = forward_backward
        torch.save = save


class SignalJobAtStep(Callback):
    """A Hydra callback for sweep jobs that run in processes of their own (``hydra/launcher=submitit_local``):
    job ``job_num`` sends itself ``signal_name`` once ``step`` optimizer steps are done, as a scheduler
    would, for the rest of its process. Not in the job once requeued (``resume=auto``), which must finish.

        seo-train -m ... +hydra.callbacks.fault._target_=helpers.fault_inject.SignalJobAtStep
            +hydra.callbacks.fault.job_num=1 +hydra.callbacks.fault.step=13

    The job's process must import this module: tests/ on its PYTHONPATH.
    """

    def __init__(self, job_num: int, step: int, signal_name: str = "SIGUSR2") -> None:
        self.job_num, self.step, self.signal_name = job_num, step, signal_name

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.job.num == self.job_num and config.resume is None:
            faults = injected(signal_at_step=self.step, signal_name=self.signal_name)
            faults.__enter__()
            _ACTIVE.append(faults)  # kept: a collected generator would put the originals back


_ACTIVE: list = []


def _train(argv: list[str], log: str | None, faults: dict) -> None:
    """The forked child: seo-train ``argv`` with ``faults``, its output into ``log``."""
    if log is not None:
        os.setpgid(0, 0)  # a process group of its own and its DataLoader workers: see train_in_child
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    torch.set_num_threads(1)  # as the test process computes the runs it compares this one with
    sys.argv = ["seo-train", *argv]
    with injected(**faults):
        seo_cli.cli.train()


def start_in_child(*argv: str, log: Path, **faults) -> multiprocessing.process.BaseProcess:
    """seo-train ``argv`` started in a forked child with ``faults`` (``injected``'s arguments), its output
    in ``log``; ``wait_for_child`` collects it."""
    child = multiprocessing.get_context("fork").Process(target=_train, args=(list(argv), str(log), faults))
    child.start()
    return child


def wait_for_child(child: multiprocessing.process.BaseProcess, log: Path, timeout: float = 240) -> int:
    """The exit code of a child from ``start_in_child``: -9 when SIGKILL ended it."""
    deadline = time.monotonic() + timeout
    # Polled (waitpid) rather than joined: join waits on a pipe that the child's own DataLoader workers
    # inherit, so it would also wait for them to notice their parent is gone (seconds after a SIGKILL).
    while child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if child.is_alive():
        child.kill()
        child.join()
        raise TimeoutError(f"seo-train still ran after {timeout} s:\n{log.read_text()[-3000:]}")
    # DataLoader workers outlive a SIGKILL of their parent by up to 5 s (until their watchdog looks), holding
    # what they inherited, the run directory's lock among it: end them as a whole-job kill would.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    return child.exitcode


def train_in_child(*argv: str, log: Path, timeout: float = 240, **faults) -> int:
    """seo-train ``argv`` in a forked child with ``faults``, its output in ``log``: the child's exit code."""
    return wait_for_child(start_in_child(*argv, log=log, **faults), log, timeout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--signal-at-step", type=int)
    parser.add_argument("--signal", default="SIGTERM")
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--signal-again-in-save", action="store_true")
    args, overrides = parser.parse_known_args()
    _train(
        [o for o in overrides if o != "--"],
        None,
        dict(
            kill_at_step=args.kill_at_step,
            signal_at_step=args.signal_at_step,
            signal_name=args.signal,
            kill_in_save=args.kill_in_save,
            signal_again_in_save=args.signal_again_in_save,
        ),
    )


if __name__ == "__main__":
    main()

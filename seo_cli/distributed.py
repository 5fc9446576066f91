"""Distributed data parallel (DDP) training with PyTorch's own engine: the launcher and the collectives.

``seo-train device=ddp device.num_devices=N`` on one machine: the Hydra process composes and resolves
the config once, creates the run directory, writes the frozen config into it and starts N workers
through ``torch.distributed.run``'s elastic launcher (``python -m seo_cli.distributed <run dir>``).
Workers read that file and never parse the command line, so a multirun's sweep is not relaunched in
each rank: every sweep job starts and ends its own process group. On several machines, ``torchrun``
starts ``python -m seo_cli.train ... hydra.run.dir=<shared dir>`` on each, and each process trains as
its rank directly.

The helpers below are no-ops in a single process, so the loop calls them unconditionally.
"""

import logging
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

FROZEN_CONFIG = "ddp_config.yaml"  # the resolved config the workers read, in the run directory's .hydra/


def in_worker() -> bool:
    """True in a process started by torchrun or by our launcher (it has a rank)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def enabled() -> bool:
    """True in a DDP worker (even a world of one, which still shards through DistributedSampler)."""
    return dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 alone writes logs, TensorBoard, checkpoints and reports."""
    return rank() == 0


def init_process_group(device_type: str, timeout_s: float) -> torch.device | None:
    """Join the job's process group: NCCL on GPUs, gloo on the CPU. Returns this rank's GPU, or None.

    ``timeout_s`` bounds every collective: when a worker dies the others stop waiting and exit.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_type in ("cuda", "auto") and torch.cuda.is_available()
    device = None
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        # N processes share the cores: without this each would start a thread per core.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        timeout=timedelta(seconds=timeout_s),
        device_id=device,
    )
    return device


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks, in place (an asynchronous collective on GPUs: no host sync)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average the gradients over the ranks by hand: what DDP does in backward, for a step it did not sync."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat /= dist.get_world_size()  # before the sum, as DDP's own all-reduce does: the same rounding
    dist.all_reduce(flat)
    for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(part.view_as(grad))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any: a collective decision (a host sync)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def gather_rows(batch: Any, num_rows: int) -> Any:
    """The rows of a split that DistributedSampler (``shuffle=False``) dealt out, back in their order.

    Rank ``r`` holds rows ``r, r + W, r + 2W, ...`` of the split padded to a multiple of W with copies
    of its first rows; gathering, interleaving and cutting at ``num_rows`` drops those copies, so the
    metrics equal a single process's on the same weights.
    """
    if not dist.is_initialized():
        return batch
    if isinstance(batch, dict):
        return {k: gather_rows(v, num_rows) for k, v in batch.items()}
    parts = [torch.empty_like(batch) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, batch.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)[:num_rows]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(run_dir: Path, num_devices: int, timeout_s: float) -> None:
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
    elastic_launch(config, sys.executable)("-m", "seo_cli.distributed", str(run_dir))


def describe_failure(error: Exception) -> str:
    """'DDP worker rank 1 (pid 123) was killed by SIGKILL': the worker whose failure started it all.

    When one worker dies the others fail too (a collective loses its peer) or are stopped by the
    launcher (SIGTERM); a death by another signal, then a rank other than 0, is the likelier cause.
    """
    import signal

    def blame(item: tuple[int, Any]) -> tuple[bool, bool, int]:
        rank_, failure = item
        by_signal = failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM
        return (not by_signal, rank_ == 0, rank_)

    failed_rank, failure = min(error.failures.items(), key=blame)
    code = failure.exitcode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return f"DDP worker rank {failed_rank} (pid {failure.pid}) {how}"


def is_collective_failure(error: BaseException) -> bool:
    """True for the error a rank gets when another rank died or hung: a collective lost its peer or timed out."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text
        for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out")
    )


def _worker_logging(run_dir: Path, rank_: int) -> None:
    """Rank 0 logs as the Hydra process does (console and train.log); other ranks only warnings."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank_ == 0:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    prefix = "" if rank_ == 0 else f"[rank {rank_}]"
    logging.basicConfig(
        level=logging.INFO if rank_ == 0 else logging.WARNING,
        format=f"[%(asctime)s][%(name)s][%(levelname)s]{prefix} - %(message)s",
        handlers=handlers,
        force=True,
    )


def main() -> None:
    """A worker started by ``launch``: train as this rank on the frozen config of the run directory."""
    from omegaconf import OmegaConf

    from seo_cli.config import TrainConfig
    from seo_cli.train import train_as_rank

    run_dir = Path(sys.argv[1])
    _worker_logging(run_dir, int(os.environ["RANK"]))
    # Typed by the schema again, as Hydra's composition types it.
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig), OmegaConf.load(run_dir / ".hydra" / FROZEN_CONFIG)
    )
    overrides = list(OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")))
    # The Hydra process checked the config, allow-list included; a sweep's job is a run of its own here.
    code, _ = train_as_rank(cfg, run_dir, overrides, multirun=False, user_config_dir=True)
    sys.exit(code)


if __name__ == "__main__":
    main()

"""The collectives of distributed data parallel (DDP) training, and this process's place in the job.

Every helper is a no-op in a single process, so the loop calls them unconditionally. Starting and
watching the worker processes is ``seo_cli.launch``'s; this module imports nothing of seo_cli.
"""

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

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


def is_collective_failure(error: BaseException) -> bool:
    """True for the error a rank gets when another rank died or hung: a collective lost its peer or timed out."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text
        for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out")
    )

"""The collective decisions of the loop under DDP, in-process: two gloo ranks run ``fit`` on a tiny model,
and one rank alone meets an out-of-memory error or a NaN loss. Both ranks must decide the same thing."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from seo_cli.config import TrainerConfig
from seo_cli.data.batches import DeviceBatches
from seo_cli.evaluation import TrainingDiverged
from seo_cli.trainer import fit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every case below, in this order, on one pair of gloo processes: each spawned process spends seconds
# importing torch. The NaN case goes last: its ranks stop together, and nothing runs after it anyway.
CASES = ("gather", "none", "oom", "nan")


def _rank_main(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on the 2-core machine
    # A collective that waits a minute for the other rank has lost it: fail instead of hanging the suite.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    for fault in CASES:
        results[(fault, rank)] = _case(rank, fault)
    dist.destroy_process_group()


def _case(rank: int, fault: str):
    if fault == "gather":  # 11 rows: rank 0 holds 0, 2, ..., 10 and rank 1 holds 1, 3, ..., 9 and a copy of 0
        from torch.utils.data import DistributedSampler

        from seo_cli.distributed import gather_rows

        local = torch.tensor(list(DistributedSampler(range(11), num_replicas=2, rank=rank, shuffle=False)))
        return gather_rows({"a": local * 10}, 11)["a"].tolist()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 1))
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=generator), torch.randn(64, generator=generator)
    batches = DeviceBatches(
        {"x": x}, {"y": y}, batch_size=16, device=torch.device("cpu"), shuffle=True, shard=(rank, 2)
    )
    calls = {"n": 0}

    def loss_fn(outputs, labels):
        calls["n"] += 1
        rows = labels["y"].shape[0]
        if fault == "oom" and rank == 1 and calls["n"] == 1 and rows > 8:
            raise torch.cuda.OutOfMemoryError("simulated: CUDA out of memory")
        loss = nn.functional.mse_loss(outputs.squeeze(-1), labels["y"])
        if fault == "nan" and rank == 1 and calls["n"] == 3:
            loss = loss * float("nan")
        return loss

    settings = TrainerConfig(epochs=2, log_every_n_steps=1, monitor="train/loss", progress="plain")
    outcome = {}
    try:
        result = fit(
            model,  # the DDP module itself: the loop finds no_sync on it
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda out, labels: loss_fn(out, labels),
            _Wrapped(batches),
            settings,
        )
        outcome["result"], outcome["splits"] = "finished", result.micro_batch_splits
    except TrainingDiverged as err:
        outcome["result"] = str(err)
    outcome["weight"] = model.module.weight.detach().clone()
    return outcome


class _Wrapped:
    """The batches with inputs as the bare tensor, which the DDP-wrapped Linear takes."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        self.batches.set_epoch(epoch)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for inputs, labels in self.batches:
            yield inputs["x"], labels


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """``{case: {rank: what the rank returned}}`` of every case in CASES."""
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_main, args=(_free_port(), results), nprocs=2, join=True)
    return {fault: {rank: results[(fault, rank)] for rank in (0, 1)} for fault in CASES}


def test_one_rank_out_of_memory_at_the_first_step_halves_the_micro_batch_on_both(outcomes):
    results = outcomes["oom"]
    # Both ranks finished, with identical weights: rank 0 did not go on alone into the all-reduce.
    assert results[0]["result"] == results[1]["result"] == "finished"
    assert results[0]["splits"] == results[1]["splits"] == 2  # rank 0 halved too, without its own error
    assert torch.equal(results[0]["weight"], results[1]["weight"])
    # And the weights equal a run without the fault: halving the micro-batch does not change the step.
    clean = outcomes["none"]
    torch.testing.assert_close(results[0]["weight"], clean[0]["weight"], rtol=1e-5, atol=1e-6)


def test_a_nan_loss_on_one_rank_stops_both_at_the_same_step(outcomes):
    results = outcomes["nan"]
    assert results[0]["result"].startswith("the training loss became NaN or infinite at step 3;")
    assert results[0]["result"] == results[1]["result"]


def test_gather_rows_puts_the_shards_back_in_order_without_the_padding_copy(outcomes):
    from seo_cli.distributed import gather_rows

    results = outcomes["gather"]
    assert results[0] == results[1] == [10 * i for i in range(11)]
    assert gather_rows(torch.arange(5), 5).tolist() == [0, 1, 2, 3, 4]  # one process: unchanged

"""DeviceBatches: every row once per epoch, orders fixed by (seed, epoch), rows kept aligned."""

import pytest
import torch

from seo_cli.data.batches import DeviceBatches

NUM_ROWS = 10


def make_batches(batch_size: int = 3, shuffle: bool = True, seed: int = 0) -> DeviceBatches:
    rows = torch.arange(NUM_ROWS)
    inputs = {"numeric": rows.float().unsqueeze(1) * 10, "tokens": rows.unsqueeze(1).repeat(1, 4)}
    return DeviceBatches(
        inputs, {"y": rows}, batch_size=batch_size, device=torch.device("cpu"), shuffle=shuffle, seed=seed
    )


def epoch_order(batches: DeviceBatches, epoch: int) -> list[int]:
    batches.set_epoch(epoch)
    order = []
    for inputs, targets in batches:
        # Inputs and targets of a row travel together.
        assert torch.equal(inputs["numeric"][:, 0], targets["y"].float() * 10)
        assert torch.equal(inputs["tokens"][:, 0], targets["y"])
        order += targets["y"].tolist()
    return order


def test_shuffled_epoch_covers_every_row_exactly_once():
    batches = make_batches()
    for epoch in range(3):
        order = epoch_order(batches, epoch)
        assert sorted(order) == list(range(NUM_ROWS))
    assert [len(t["y"]) for _, t in batches] == [3, 3, 3, 1]


def test_same_epoch_gives_the_same_order_regardless_of_history():
    first = make_batches()
    order = epoch_order(first, 2)
    assert epoch_order(first, 2) == order
    epoch_order(first, 5)
    assert epoch_order(first, 2) == order
    assert epoch_order(make_batches(), 2) == order  # a fresh instance, as after a resume


def test_orders_differ_across_epochs_and_seeds():
    batches = make_batches()
    orders = [epoch_order(batches, epoch) for epoch in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    assert all(o != list(range(NUM_ROWS)) for o in orders)
    assert epoch_order(make_batches(seed=1), 0) != orders[0]


def test_no_shuffle_keeps_the_row_order():
    batches = make_batches(batch_size=4, shuffle=False)
    for epoch in range(2):
        assert epoch_order(batches, epoch) == list(range(NUM_ROWS))
    assert [t["y"].tolist() for _, t in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize(("batch_size", "expected"), [(1, 10), (3, 4), (5, 2), (10, 1), (64, 1)])
def test_len_is_the_number_of_batches(batch_size, expected):
    batches = make_batches(batch_size=batch_size)
    assert len(batches) == expected
    assert sum(1 for _ in batches) == expected

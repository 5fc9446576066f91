"""DeviceBatches and StreamedBatches: every row once per epoch, orders fixed by (seed, epoch), rows kept aligned,
the same batches whichever the placement."""

import pytest
import torch

from seo_cli.data import batches as batching
from seo_cli.data.batches import DeviceBatches, StreamedBatches, fits_on_device

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


def _split_tensors(rows: int = 50):
    generator = torch.Generator().manual_seed(0)
    inputs = {"numeric": torch.randn(rows, 3, generator=generator), "tokens": torch.randint(0, 9, (rows, 4))}
    return inputs, {"y": torch.arange(rows)}


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_batches_are_the_device_batches(shuffle, num_workers):
    inputs, targets = _split_tensors()
    device = DeviceBatches(inputs, targets, batch_size=8, device=torch.device("cpu"), shuffle=shuffle, seed=5)
    streamed = StreamedBatches(
        inputs, targets, batch_size=8, shuffle=shuffle, seed=5, num_workers=num_workers
    )
    assert len(streamed) == len(device) == 7
    for epoch in (0, 1):
        device.set_epoch(epoch)
        streamed.set_epoch(epoch)
        pairs = list(zip(device, streamed, strict=True))
        assert len(pairs) == 7
        for (x1, y1), (x2, y2) in pairs:
            assert torch.equal(y1["y"], y2["y"]) and torch.equal(x1["tokens"], x2["tokens"])
            assert torch.equal(x1["numeric"], x2["numeric"])
    if shuffle:  # epochs differ from each other, and not in file order
        streamed.set_epoch(0)
        first = torch.cat([y["y"] for _, y in streamed])
        streamed.set_epoch(1)
        assert not torch.equal(first, torch.cat([y["y"] for _, y in streamed]))
        assert sorted(first.tolist()) == list(range(50))


def test_streaming_does_not_draw_from_the_global_rng():
    # Dropout draws from the global RNG: iterating the loader must leave it alone, or the results
    # (and an exact resume) would depend on the placement.
    inputs, targets = _split_tensors()
    streamed = StreamedBatches(inputs, targets, batch_size=8, shuffle=True, seed=1, num_workers=0)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    list(streamed)
    assert torch.equal(torch.rand(3), expected)


def test_auto_placement_streams_what_does_not_fit_in_half_the_free_gpu_memory(monkeypatch):
    inputs, targets = _split_tensors()  # 50 x 3 floats + 50 x 4 int64 + 50 int64 = 2,600 bytes
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5_200, 80_000))
    assert fits_on_device([inputs, targets], cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5_199, 80_000))
    assert not fits_on_device([inputs, targets], cuda)
    streamed = batching.make_batches(
        inputs, targets, batch_size=8, device=cuda, placement="auto", num_workers=0
    )
    assert isinstance(streamed, StreamedBatches)
    assert fits_on_device([inputs, targets], torch.device("cpu"))


def test_a_streamed_run_trains_to_the_same_weights_as_a_device_run(train_run, one_thread):
    # Bit for bit only at one intra-op thread (the session's, tests/conftest.py): with two, runs of one
    # config have differed in their last bits now and then.
    assert torch.get_num_threads() == 1
    _, on_device = train_run("data.placement=device")
    _, streamed = train_run("data.placement=stream", "data.num_workers=1")
    a = torch.load(on_device / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(streamed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def ragged_tokens(lengths: list[int], width: int = 32) -> torch.Tensor:
    """Right-padded token ids: row i has lengths[i] tokens (ids 5..), then [PAD] (0)."""
    tokens = torch.zeros(len(lengths), width, dtype=torch.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.arange(5, 5 + n)
    return tokens


LENGTHS = [3, 17, 1, 0, 9, 32, 5, 2]  # 0: a text without tokens; 32: one filling max_length


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_each_batch_is_cut_to_its_longest_row_rounded_up_to_the_multiple(placement):
    tokens = ragged_tokens(LENGTHS)
    inputs, targets = {"tokens": tokens}, {"y": torch.arange(len(LENGTHS))}
    batches = batching.make_batches(
        inputs, targets, batch_size=2, device=torch.device("cpu"), placement=placement, num_workers=0,
        pad_to_multiple_of=8,
    )  # fmt: skip
    widths = [x["tokens"].shape[1] for x, _ in batches]
    # rows (3, 17) -> 24, (1, 0) -> 8, (9, 32) -> 32 (never above max_length), (5, 2) -> 8
    assert widths == [24, 8, 32, 8]
    for x, y in batches:  # nothing but padding is cut
        assert torch.equal(x["tokens"], tokens[y["y"], : x["tokens"].shape[1]])
        assert (tokens[y["y"], x["tokens"].shape[1] :] == 0).all()
    # 8 rows x (24, 24, 8, 8, 32, 32, 8, 8) slots = 144, of which 69 real tokens
    assert batches.padding_fraction() == {"speed/padding_fraction": pytest.approx(1 - 69 / 144)}
    assert batches.padding_fraction() == {}  # read once per epoch
    fixed = batching.make_batches(
        inputs, targets, batch_size=2, device=torch.device("cpu"), placement=placement, num_workers=0
    )
    assert [x["tokens"].shape[1] for x, _ in fixed] == [32] * 4
    assert fixed.padding_fraction() == {"speed/padding_fraction": pytest.approx(1 - 69 / 256)}


def test_a_pad_token_inside_a_text_is_not_where_the_text_ends():
    tokens = ragged_tokens([6, 2])
    tokens[0, 2] = 0  # "[PAD]" typed in the text: the model masks it, the rows after it are still text
    batches = DeviceBatches(
        {"tokens": tokens},
        {"y": torch.arange(2)},
        batch_size=2,
        device=torch.device("cpu"),
        pad_to_multiple_of=1,
    )
    [(x, _)] = list(batches)
    assert x["tokens"].shape[1] == 6 and torch.equal(x["tokens"], tokens[:, :6])


def test_shuffled_and_sharded_batches_are_cut_per_batch():
    lengths = [n % 29 for n in range(0, 290, 7)]
    tokens = ragged_tokens(lengths)
    targets = {"y": torch.arange(len(lengths))}
    for shard in (None, (1, 2)):
        batches = DeviceBatches(
            {"tokens": tokens},
            targets,
            batch_size=4,
            device=torch.device("cpu"),
            shuffle=True,
            seed=3,
            shard=shard,
            pad_to_multiple_of=4,
        )
        for x, y in batches:
            longest = max(lengths[i] for i in y["y"].tolist())
            assert x["tokens"].shape[1] == min(32, max(4, -(-longest // 4) * 4))
            assert torch.equal(x["tokens"], tokens[y["y"], : x["tokens"].shape[1]])


HEADLINES = [5 + (i * 7919) % 16 for i in range(400)]  # 5 to 20 tokens, in no order


def bucket_batches(placement: str = "device", shard=None, seed: int = 3) -> "batching.DeviceBatches":
    tokens = ragged_tokens(HEADLINES, width=64)
    return batching.make_batches(
        {"tokens": tokens}, {"y": torch.arange(len(HEADLINES))}, batch_size=16, device=torch.device("cpu"),
        placement=placement, num_workers=0, shuffle=True, seed=seed, shard=shard, pad_to_multiple_of=1,
        bucket_by_length=True,
    )  # fmt: skip


def test_length_buckets_keep_every_row_once_cut_padding_and_depend_only_on_seed_and_epoch():
    batches = bucket_batches()
    batches.set_epoch(0)
    rows = [y["y"] for _, y in batches]
    assert sorted(torch.cat(rows).tolist()) == list(range(400))  # every row, once
    assert [len(r) for r in rows] == [16] * 25  # the batch sizes of an unbucketed epoch
    bucketed_padding = batches.padding_fraction()["speed/padding_fraction"]
    plain = batching.make_batches(
        {"tokens": ragged_tokens(HEADLINES, width=64)}, {"y": torch.arange(400)}, batch_size=16,
        device=torch.device("cpu"), shuffle=True, seed=3, pad_to_multiple_of=1,
    )  # fmt: skip
    list(plain)
    plain_padding = plain.padding_fraction()["speed/padding_fraction"]
    # Random batches of 5-20 tokens are cut near 20: about 37% padding; buckets of 800 sorted rows: under 5%.
    assert plain_padding > 0.3 and bucketed_padding < 0.05
    # The same (seed, epoch), whatever ran before, in another object: the same batches (exact resume).
    again = bucket_batches()
    again.set_epoch(5)
    list(again)
    again.set_epoch(0)
    assert all(torch.equal(a, y["y"]) for a, (_, y) in zip(rows, again, strict=True))
    batches.set_epoch(1)
    assert not torch.equal(torch.cat(rows), torch.cat([y["y"] for _, y in batches]))  # epochs differ


def test_length_buckets_are_the_same_streamed_and_per_rank_under_ddp():
    device, streamed = bucket_batches("device"), bucket_batches("stream")
    for epoch in (0, 1):
        device.set_epoch(epoch)
        streamed.set_epoch(epoch)
        for (x1, y1), (x2, y2) in zip(device, streamed, strict=True):
            assert torch.equal(y1["y"], y2["y"]) and torch.equal(x1["tokens"], x2["tokens"])
    ranks = [bucket_batches(shard=(rank, 2)) for rank in (0, 1)]
    seen = [torch.cat([y["y"] for _, y in r]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 200  # the same number of steps on each rank
    assert sorted(torch.cat(seen).tolist()) == list(range(400))  # together, every row once

"""Gradient accumulation and the out-of-memory fallback: both must leave the gradient of the effective batch unchanged."""

import logging

import pytest
import torch
from torch import nn

from seo_cli.config import TrainerConfig
from seo_cli.errors import UserError
from seo_cli.models.mlp import MLP
from seo_cli.trainer import fit


def _model() -> nn.Module:
    torch.manual_seed(0)
    # No batch-dependent layer (batch norm): a big batch and its pieces see the same function.
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def _data(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 6, generator=generator)
    return x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(rows, 1, generator=generator)


def _batches(x: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(torch.split(x, sizes), torch.split(y, sizes), strict=True))


def _train(model: nn.Module, batches, *, accumulate: int = 1, epochs: int = 2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    settings = TrainerConfig(
        epochs=epochs, monitor="train/loss", progress="plain", accumulate_grad_batches=accumulate
    )
    result = fit(
        model,
        optimizer,
        nn.functional.mse_loss,
        batches,
        settings,
    )
    return result, model


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_four_micro_batches_equal_one_four_times_larger_batch():
    x, y = _data(128)
    small, big = _model(), _model()
    result, _ = _train(small, _batches(x, y, [8] * 16), accumulate=4)
    _train(big, _batches(x, y, [32] * 4))
    assert result.global_step == 2 * 4
    _assert_same_weights(small, big)


def test_a_short_last_window_is_divided_by_its_own_length():
    # 10 batches of 8 with accumulate=4: windows of 4, 4 and 2 batches. The last window must be the
    # mean of its 2 batch losses, i.e. the gradient of one 16-row batch; dividing by 4 would halve it.
    x, y = _data(80)
    small, big = _model(), _model()
    result, _ = _train(small, _batches(x, y, [8] * 10), accumulate=4)
    _train(big, _batches(x, y, [32, 32, 16]))
    assert result.global_step == 2 * 3
    _assert_same_weights(small, big)


class OutOfMemoryAbove(nn.Module):
    """A module that raises CUDA's out-of-memory error for batches above ``limit`` rows, as a GPU would."""

    def __init__(self, model: nn.Module, limit: int, fail_on_calls: set[int] | None = None) -> None:
        super().__init__()
        self.model, self.limit, self.fail_on_calls, self.calls, self.rows = model, limit, fail_on_calls, 0, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        too_big = x.shape[0] > self.limit and self.training
        if too_big and (self.fail_on_calls is None or self.calls in self.fail_on_calls):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.rows.append(x.shape[0])
        return self.model(x)


def test_out_of_memory_at_micro_batch_64_continues_at_32_with_the_same_effective_batch(caplog):
    x, y = _data(256)
    reference = _model()
    _train(reference, _batches(x, y, [64] * 4))
    guarded = OutOfMemoryAbove(_model(), limit=32)
    with caplog.at_level(logging.WARNING):
        result, _ = _train(guarded, _batches(x, y, [64] * 4))
    assert (
        "CUDA out of memory at step 1 with micro-batch 64: halving it to 32 and doubling gradient accumulation "
        "to 2, so the effective batch stays 64 rows." in caplog.text
    )
    assert result.micro_batch_splits == 2
    assert result.global_step == 8  # 4 optimizer steps per epoch, as before: the effective batch is 64
    assert set(guarded.rows) == {32}
    _assert_same_weights(guarded.model, reference)


def test_out_of_memory_in_the_middle_of_a_window_redoes_the_whole_window():
    # With accumulate=2 the 2nd batch of the first window fails after the 1st batch's backward:
    # its gradients must not be counted twice.
    x, y = _data(256)
    reference = _model()
    _train(reference, _batches(x, y, [64] * 4), accumulate=2)
    guarded = OutOfMemoryAbove(_model(), limit=32, fail_on_calls={2})
    result, _ = _train(guarded, _batches(x, y, [64] * 4), accumulate=2)
    assert result.micro_batch_splits == 2
    _assert_same_weights(guarded.model, reference)


def test_out_of_memory_at_micro_batch_1_gives_up_with_a_clear_error():
    x, y = _data(8)
    guarded = OutOfMemoryAbove(_model(), limit=0)
    with pytest.raises(UserError, match=r"CUDA ran out of memory at step 1 even with a micro-batch of 1 row"):
        _train(guarded, _batches(x, y, [8]))
    # 8 -> 4 -> 2 -> 1 rows, then the error: each halving was tried once.
    assert guarded.calls == 4


def test_cli_accumulation_takes_fewer_optimizer_steps(train_run):
    summary, _ = train_run("trainer.accumulate_grad_batches=2", "scheduler.warmup_steps=5")
    # debug=smoke: 27 batches of 16 per epoch -> 14 optimizer steps (the last window has 1 batch).
    assert summary["global_step"] == 14
    assert summary["accumulate_grad_batches"] == 2 and summary["micro_batch_size"] == 16


def test_cli_run_reports_the_smaller_micro_batch_after_out_of_memory(train_run, monkeypatch):
    forward = MLP.forward

    def forward_with_8_rows_of_memory(self, inputs):
        if self.training and next(iter(inputs.values())).shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return forward(self, inputs)

    monkeypatch.setattr(MLP, "forward", forward_with_8_rows_of_memory)
    summary, _ = train_run("model=mlp")
    assert summary["micro_batch_size"] == 8 and summary["accumulate_grad_batches"] == 2
    assert summary["global_step"] == 27  # the optimizer steps, and so the schedule, are unchanged

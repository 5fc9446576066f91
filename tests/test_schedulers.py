"""The learning-rate sequence each scheduler builder produces, step by step."""

import math

import pytest
import torch

from seo_cli import schedulers

LR = 0.5


def make_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)


def lr_sequence(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps, and the rate after the last one."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates + [optimizer.param_groups[0]["lr"]]


def cosine_between(high: float, low: float, t: int, length: int) -> float:
    return low + (high - low) * (1 + math.cos(math.pi * t / length)) / 2


def test_warmup_cosine_warms_up_linearly_then_decays_to_the_floor():
    optimizer = make_optimizer()
    scheduler = schedulers.warmup_cosine(
        optimizer, total_steps=10, steps_per_epoch=5, warmup_steps=4, min_lr_ratio=0.1
    )
    rates = lr_sequence(optimizer, scheduler, 10)
    warmup = [LR * (0.25 + 0.75 * k / 4) for k in range(4)]  # starts at lr / warmup_steps
    decay = [cosine_between(LR, 0.1 * LR, t, 6) for t in range(7)]  # reaches lr at step warmup_steps
    assert rates == pytest.approx(warmup + decay)
    assert rates[0] == pytest.approx(LR / 4)
    assert rates[4] == pytest.approx(LR)
    assert rates[-1] == pytest.approx(0.1 * LR)  # the floor is min_lr_ratio x lr, not x the warm-up start


def test_warmup_cosine_without_floor_ends_at_zero():
    optimizer = make_optimizer()
    scheduler = schedulers.warmup_cosine(optimizer, total_steps=6, steps_per_epoch=3, warmup_steps=2)
    rates = lr_sequence(optimizer, scheduler, 6)
    expected = [LR / 2, 0.75 * LR] + [cosine_between(LR, 0.0, t, 4) for t in range(5)]
    assert rates == pytest.approx(expected, abs=1e-12)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_decays_from_lr_to_the_floor_over_the_run():
    optimizer = make_optimizer()
    scheduler = schedulers.cosine(optimizer, total_steps=8, steps_per_epoch=4, min_lr_ratio=0.1)
    rates = lr_sequence(optimizer, scheduler, 8)
    assert rates == pytest.approx([cosine_between(LR, 0.1 * LR, t, 8) for t in range(9)])
    assert rates[4] == pytest.approx(0.55 * LR)  # half way: the mean of lr and the floor


def test_step_multiplies_by_gamma_every_step_epochs_epochs():
    optimizer = make_optimizer()
    scheduler = schedulers.step(optimizer, total_steps=15, steps_per_epoch=3, step_epochs=2, gamma=0.1)
    rates = lr_sequence(optimizer, scheduler, 14)
    assert rates == pytest.approx([LR] * 6 + [LR * 0.1] * 6 + [LR * 0.01] * 3)


def test_plateau_reduces_after_patience_epochs_without_improvement():
    optimizer = make_optimizer()
    scheduler = schedulers.plateau(
        optimizer, total_steps=100, steps_per_epoch=10, monitor="val/loss", mode="min", factor=0.5, patience=2
    )
    rates = []
    for value in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]:
        scheduler.step(value)
        rates.append(optimizer.param_groups[0]["lr"])
    # best 0.9 at epoch 1; epochs 2-3 are within patience, epoch 4 is the third without improvement.
    assert rates == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2, LR / 2, LR / 4])


def test_plateau_keeps_the_rate_while_the_metric_improves_in_its_mode():
    optimizer = make_optimizer()
    scheduler = schedulers.plateau(
        optimizer, total_steps=100, steps_per_epoch=10, monitor="val/acc", mode="max", factor=0.5, patience=0
    )
    for value in [0.5, 0.6, 0.7, 0.8]:
        scheduler.step(value)
    assert optimizer.param_groups[0]["lr"] == LR
    scheduler.step(0.1)  # worse in max mode, patience 0: cut at once
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)

"""Learning-rate schedules built from torch's own schedulers.

Each builder takes the knobs of its YAML file plus, from the call site, the optimizer and the run's
length in optimizer steps. Every scheduler but ``plateau`` is stepped once per optimizer step;
``plateau`` is stepped once per epoch with the monitored metric.
"""

import math

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from seo_cli.errors import require


def cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, steps_per_epoch: int, min_lr_ratio: float = 0.0
) -> LRScheduler:
    _check_min_lr_ratio(min_lr_ratio)
    return CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=_min_lr(optimizer, min_lr_ratio))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
    warmup_ratio: float | None = None,
) -> LRScheduler:
    """``warmup_ratio`` (a share of the run, e.g. 0.1), when set, replaces ``warmup_steps``."""
    require(warmup_steps >= 0, f"scheduler.warmup_steps={warmup_steps} must be 0 or more, e.g. 20.")
    if warmup_ratio is not None:
        require(0 <= warmup_ratio < 1, f"scheduler.warmup_ratio={warmup_ratio} must be from 0 to below 1, e.g. 0.1.")
        warmup_steps = int(warmup_ratio * total_steps)
    _check_min_lr_ratio(min_lr_ratio)
    # LinearLR cannot start at exactly 0; 1/warmup_steps makes the first step's rate lr/warmup_steps.
    warmup = LinearLR(
        optimizer, start_factor=1.0 / max(warmup_steps, 1), end_factor=1.0, total_iters=warmup_steps
    )
    decay = CosineAnnealingLR(
        optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=_min_lr(optimizer, min_lr_ratio)
    )
    return SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[warmup_steps])


def step(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    step_epochs: int,
    gamma: float,
) -> LRScheduler:
    require(isinstance(step_epochs, int) and step_epochs >= 1, f"scheduler.step_epochs={step_epochs} must be a whole number of at least 1.")
    require(0 < gamma <= 1, f"scheduler.gamma={gamma} must be above 0 and at most 1, e.g. 0.5.")
    return StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)


def plateau(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    monitor: str,
    mode: str,
    factor: float,
    patience: int,
) -> ReduceLROnPlateau:
    require(0 < factor < 1, f"scheduler.factor={factor} must be between 0 and 1, e.g. 0.5.")
    require(patience >= 0, f"scheduler.patience={patience} must be 0 or more, e.g. 2.")
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    # Read by the trainer, which passes the metric's value to step() after each validation.
    scheduler.monitor = monitor
    return scheduler


def _check_min_lr_ratio(ratio: float) -> None:
    require(0 <= ratio <= 1, f"scheduler.min_lr_ratio={ratio} must be between 0 and 1, e.g. 0.01.")


def _min_lr(optimizer: torch.optim.Optimizer, ratio: float) -> float:
    # One floor for all groups: CosineAnnealingLR takes a single eta_min. "initial_lr" is the configured
    # rate; "lr" may already be lowered by a scheduler built before this one (warmup_cosine's LinearLR).
    peak = max(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
    return ratio * peak if not math.isclose(ratio, 0.0) else 0.0

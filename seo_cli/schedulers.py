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


def cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, steps_per_epoch: int, min_lr_ratio: float = 0.0
) -> LRScheduler:
    return CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=_min_lr(optimizer, min_lr_ratio))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
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
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    # Read by the trainer, which passes the metric's value to step() after each validation.
    scheduler.monitor = monitor
    return scheduler


def _min_lr(optimizer: torch.optim.Optimizer, ratio: float) -> float:
    # One floor for all groups: CosineAnnealingLR takes a single eta_min. "initial_lr" is the configured
    # rate; "lr" may already be lowered by a scheduler built before this one (warmup_cosine's LinearLR).
    peak = max(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
    return ratio * peak if not math.isclose(ratio, 0.0) else 0.0

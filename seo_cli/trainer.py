"""The training loop: one function, ``fit``, to read top to bottom.

Each step runs forward, loss, backward, ``optimizer.step()``, ``scheduler.step()``, ``zero_grad``
in that order; logging, validation and checkpointing are called in plain sight, with no callbacks.
Values stay on the device between logging intervals: the loop reads them (a host sync) only there.
"""

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from seo_cli.checkpoint import rng_state, save_checkpoint, unwrap_state_dict
from seo_cli.console import TrainProgress
from seo_cli.data.spec import Target
from seo_cli.errors import UserError
from seo_cli.loggers import MetricsSink
from seo_cli.metrics import as_numpy, flatten, target_reports

log = logging.getLogger(__name__)

Batch = Any  # a tensor, or a dict / list / tuple of tensors


@dataclass
class FitSettings:
    epochs: int
    log_every_n_steps: int = 50
    monitor: str = "val/loss"  # picks best.pt
    mode: str = "min"  # min | max
    scheduler_monitor: str | None = None  # metric a ReduceLROnPlateau scheduler steps on
    progress: str = "auto"  # auto | rich | plain


@dataclass
class CheckpointSaver:
    """Writes ``last.pt`` every epoch and ``best.pt`` when the monitored metric improves, into ``directory``.

    ``extra`` holds what does not change during the run (resolved config, preprocessing).
    """

    directory: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, name: str, state: dict[str, Any]) -> Path:
        return save_checkpoint({**self.extra, **state}, self.directory / name)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    best_metrics: dict[str, float]
    global_step: int
    samples_per_second: float
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], Tensor],
    train_batches: Iterable[tuple[Batch, Batch]],
    val_batches: Iterable[tuple[Batch, Batch]] | None,
    *,
    targets: list[Target],
    settings: FitSettings,
    scheduler: Any = None,
    sink: MetricsSink | None = None,
    checkpoints: CheckpointSaver | None = None,
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
) -> FitResult:
    """Train ``model`` for ``settings.epochs`` epochs, validating after each.

    Args:
        train_batches: yields ``(inputs, targets)``; ``model(inputs)`` gives the outputs and
            ``loss_fn(outputs, targets)`` a scalar. Its ``set_epoch(epoch)`` is called if it has one.
        val_batches: the same for validation; None trains without validation.
        targets: names and task types of the outputs, for the metrics.
        target_scale: per regression target, the (mean, std) its values were standardised with.

    Returns:
        The per-epoch history and the best epoch by ``settings.monitor``.
    """
    device = next(model.parameters()).device
    sink = sink or MetricsSink(None)
    if iter(train_batches) is train_batches:
        raise UserError(
            "train_batches is a one-shot iterator (a generator, say) that would be empty after the first epoch; "
            "pass a DataLoader, a Dataset or a list of batches."
        )
    steps_per_epoch = len(train_batches) if hasattr(train_batches, "__len__") else 0
    progress = TrainProgress(settings.progress, settings.epochs, steps_per_epoch)
    history: list[dict[str, float]] = []
    best_value, best_epoch, best_metrics = math.nan, 0, {}  # best_epoch 0: no best yet
    best_path = last_path = None
    global_step, samples, train_seconds = 0, 0, 0.0
    try:
        for epoch in range(settings.epochs):
            model.train()
            if hasattr(train_batches, "set_epoch"):
                train_batches.set_epoch(epoch)
            progress.start_epoch(epoch)
            # Summed over rows, so a short last batch weighs by its size in the epoch's mean.
            epoch_loss = torch.zeros((), device=device)
            epoch_rows = 0
            window_loss = torch.zeros((), device=device)
            window_steps, step_in_epoch, epoch_start = 0, 0, time.perf_counter()
            for step_in_epoch, (inputs, labels) in enumerate(train_batches, start=1):
                inputs, labels = move_to(inputs, device), move_to(labels, device)
                outputs = model(inputs)
                loss = loss_fn(outputs, labels)
                loss.backward()
                optimizer.step()
                if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                rows = batch_size_of(labels)
                samples += rows
                epoch_rows += rows
                epoch_loss += loss.detach() * rows
                window_loss += loss.detach()
                window_steps += 1
                if global_step % settings.log_every_n_steps == 0:
                    # note: .item() waits for the device; it happens once per logging interval, not per step.
                    values = {
                        "train/loss": (window_loss / window_steps).item(),
                        "train/lr": current_lr(optimizer),
                    }
                    sink.log(values, global_step)
                    progress.update(epoch, step_in_epoch, values)
                    window_loss.zero_()
                    window_steps = 0

            # .item() waits for the device's queued work, so the epoch's time below includes it.
            metrics = {"epoch": float(epoch + 1), "train/loss": (epoch_loss / max(epoch_rows, 1)).item()}
            train_seconds += time.perf_counter() - epoch_start
            if val_batches is not None:
                metrics |= evaluate(model, val_batches, loss_fn, targets, "val", target_scale, class_names)[0]
            monitored = _metric(metrics, settings.monitor)
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(_metric(metrics, settings.scheduler_monitor or settings.monitor))
            history.append(metrics)
            sink.log(metrics, global_step)
            progress.end_epoch(epoch, metrics)

            # A NaN value never improves on a best; the first epoch is a best whatever its value, so
            # best.pt always exists.
            improved = best_epoch == 0 or (
                math.isnan(best_value)
                and not math.isnan(monitored)
                or (monitored < best_value if settings.mode == "min" else monitored > best_value)
            )
            if improved:
                best_value, best_epoch, best_metrics = monitored, epoch + 1, metrics
            if checkpoints is not None:
                state = {
                    "model": unwrap_state_dict(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "metrics": metrics,
                    "history": history,
                    "best": {"monitor": settings.monitor, "value": best_value, "epoch": best_epoch},
                    "rng": rng_state(),
                }
                last_path = checkpoints.save("last.pt", state)
                if improved:
                    best_path = checkpoints.save("best.pt", state)
    finally:
        progress.close()
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_value=best_value,
        best_metrics=best_metrics,
        global_step=global_step,
        samples_per_second=samples / train_seconds if train_seconds else 0.0,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
    )


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[Batch, Batch]]) -> tuple[Batch, Batch]:
    """Model outputs and labels of every batch, concatenated on the device (no host transfer here)."""
    model.eval()
    device = next(model.parameters()).device
    outputs, labels = [], []
    for inputs, y in batches:
        outputs.append(model(move_to(inputs, device)))
        labels.append(move_to(y, device))
    return _concat(outputs), _concat(labels)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Batch, Batch]],
    loss_fn: Callable[[Any, Any], Tensor] | None,
    targets: list[Target],
    split: str,
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
) -> tuple[dict[str, float], dict[str, dict]]:
    """Loss and metrics of ``model`` on every row of ``batches``.

    The loss is computed once over all rows, so it is the exact mean, not a mean of batch means.

    Returns:
        Scalar metrics keyed ``{split}/...`` and the full report per target (confusion matrices included).
    """
    outputs, labels = predict(model, batches)
    metrics: dict[str, float] = {}
    if loss_fn is not None:
        metrics[f"{split}/loss"] = loss_fn(outputs, labels).item()
        if hasattr(loss_fn, "terms"):
            metrics |= {
                f"{split}/{name}/loss": v.item() for name, v in loss_fn.terms(outputs, labels).items()
            }
    if isinstance(labels, Tensor):
        labels = {targets[0].name: labels}
    label_arrays = {name: y.reshape(-1).cpu().numpy() for name, y in labels.items()}
    predictions = as_numpy(outputs, targets)
    reports = target_reports(predictions, label_arrays, targets, target_scale, class_names)
    return metrics | flatten(reports, split), reports


def move_to(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def batch_size_of(labels: Batch) -> int:
    if isinstance(labels, Tensor):
        return labels.shape[0]
    return batch_size_of(next(iter(labels.values())) if isinstance(labels, dict) else labels[0])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return lr.item() if isinstance(lr, Tensor) else float(lr)


def _concat(parts: list[Batch]) -> Batch:
    if not parts:
        raise UserError(
            "the evaluation data has no batches; give validation or test data with at least one row."
        )
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _metric(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise UserError(
            f"the monitored metric {name!r} is not logged by this run; choose one of: {', '.join(sorted(metrics))}."
        )
    return metrics[name]

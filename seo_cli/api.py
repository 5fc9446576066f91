"""Training and evaluation from Python, without Hydra, for notebooks and scripts.

    trainer = ModelTrainer(model, train_data=(x_train, y_train), val_data=(x_val, y_val),
                           task_type="classification", epochs=5)
    result = trainer.train()
    metrics = ModelEvaluator(model).evaluate(val_loader, task_type="classification")

``model`` is any ``nn.Module``; data is a ``DataLoader`` (or any iterable of ``(inputs, targets)``
batches), a ``Dataset`` yielding ``(inputs, target)`` pairs, or an ``(inputs, targets)`` tuple of
tensors, which is kept on the device and batched by index.
"""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from seo_cli.checkpoint import CheckpointManager
from seo_cli.data.batches import DeviceBatches
from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.loggers import MetricsSink
from seo_cli.runtime import check_precision, pick_device, seed_worker
from seo_cli.trainer import FitResult, FitSettings, evaluation, fit

DataLike = DataLoader | Dataset | Iterable | tuple[Tensor, Tensor]


class ModelTrainer:
    """Train a model of your own with seo-cli's loop: validation, metrics, checkpoints, metrics.jsonl.

    Args:
        model: any module; ``model(inputs)`` must return what ``loss_fn`` takes with the targets.
        train_data: training batches (see the module docstring for the accepted forms).
        val_data: validation batches, or None to train without validation.
        task_type: classification (outputs are logits [B, K]) or regression (outputs [B] or [B, 1]).
        loss_fn: defaults to cross entropy for classification and MSE for regression.
        optimizer: a ready optimizer over ``model.parameters()``; defaults to AdamW(lr, weight_decay).
        scheduler: an optional torch LR scheduler, stepped every optimizer step (ReduceLROnPlateau: every epoch).
        output_dir: where ``metrics.jsonl`` and ``checkpoints/{last,best}.pt`` go; None writes nothing.
        monitor: the metric that picks the best epoch; defaults to val/loss, or train/loss without val_data.
        precision: 32, bf16 or fp16 (autocast; fp16 with a GradScaler).
        accumulate_grad_batches: batches per optimizer step.
        gradient_clip_val: clip the gradients' total norm to this; None does not clip.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: DataLike,
        val_data: DataLike | None = None,
        *,
        task_type: str = CLASSIFICATION,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        device: str = "auto",
        output_dir: str | Path | None = None,
        monitor: str | None = None,
        mode: str = "min",
        log_every_n_steps: int = 50,
        seed: int = 0,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
    ) -> None:
        if task_type not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"task_type={task_type!r} must be 'classification' or 'regression'")
        self.device = pick_device(device)
        check_precision(precision, self.device)
        self.model = model.to(self.device)
        self.task_type = task_type
        self.loss_fn = loss_fn or (nn.CrossEntropyLoss() if task_type == CLASSIFICATION else _flat_mse)
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.scheduler = scheduler
        self.train_batches = _batches(train_data, batch_size, self.device, shuffle=True, seed=seed)
        self.val_batches = _batches(val_data, batch_size, self.device) if val_data is not None else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.settings = FitSettings(
            epochs=epochs,
            log_every_n_steps=log_every_n_steps,
            monitor=monitor or ("val/loss" if val_data is not None else "train/loss"),
            mode=mode,
            progress="plain",
            precision=precision,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
        )

    def train(self) -> FitResult:
        """Run the loop; returns the per-epoch history and the best epoch."""
        sink = MetricsSink(self.output_dir / "metrics.jsonl" if self.output_dir else None)
        checkpoints = None
        if self.output_dir is not None:
            checkpoints = CheckpointManager(self.output_dir / "checkpoints", mode=self.settings.mode)
        try:
            return fit(
                self.model,
                self.optimizer,
                self.loss_fn,
                self.train_batches,
                self.val_batches,
                targets=[Target("target", self.task_type)],
                settings=self.settings,
                scheduler=self.scheduler,
                sink=sink,
                checkpoints=checkpoints,
            )
        finally:
            sink.close()


class ModelEvaluator:
    """Metrics of a trained model on any batches, computed by scikit-learn."""

    def __init__(self, model: nn.Module, device: str = "auto") -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device)

    def evaluate(
        self,
        data: DataLike,
        task_type: str = CLASSIFICATION,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        class_names: list[str] | None = None,
        batch_size: int = 1024,
    ) -> dict[str, Any]:
        """Returns:
        ``{"loss": ..., "accuracy": ..., "f1_macro": ..., ..., "confusion_matrix": [[...]]}`` for
        classification, ``{"mse", "rmse", "mae", "r2"}`` (and ``loss`` if given) for regression.
        """
        batches = _batches(data, batch_size, self.device)
        target = Target("target", task_type)
        names = {"target": class_names} if class_names else None
        scored = evaluation(self.model, batches, loss_fn, [target], "eval", class_names=names)
        metrics, reports = scored.metrics, scored.reports
        result: dict[str, Any] = dict(reports["target"])
        if "eval/loss" in metrics:
            result["loss"] = metrics["eval/loss"]
        return result


def _batches(data: DataLike, batch_size: int, device: torch.device, shuffle: bool = False, seed: int = 0):
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        return _TensorPairBatches(
            DeviceBatches(
                {"x": x}, {"y": y}, batch_size=batch_size, device=device, shuffle=shuffle, seed=seed
            )
        )
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            data, batch_size=batch_size, shuffle=shuffle, generator=generator, worker_init_fn=seed_worker
        )
    return data


class _TensorPairBatches:
    """DeviceBatches over one input and one target tensor, yielding plain ``(x, y)`` pairs."""

    def __init__(self, batches: DeviceBatches) -> None:
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for inputs, targets in self.batches:
            yield inputs["x"], targets["y"]


def _flat_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.mse_loss(outputs.reshape(-1).float(), targets.reshape(-1).float())

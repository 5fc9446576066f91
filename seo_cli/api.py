"""Training and evaluation from Python, without Hydra, for notebooks and scripts.

    trainer = ModelTrainer(model, train_data=(x_train, y_train), val_data=(x_val, y_val),
                           task_type="classification", epochs=5)
    result = trainer.train()
    metrics = ModelEvaluator(model).evaluate(val_loader, task_type="classification")

``model`` is any ``nn.Module``; data is a ``DataLoader`` (or any re-iterable of ``(inputs, targets)``
batches), a ``Dataset`` yielding ``(inputs, target)`` pairs, or an ``(inputs, targets)`` tuple of
tensors, which is kept on the device and batched by index. The loop's knobs are the command line's:
``config=TrainerConfig(...)`` (``seo_cli.config``), or any of its fields by name (``epochs=5``).
"""

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from seo_cli import schedulers
from seo_cli.checkpoint import CheckpointManager, latest_checkpoint, load_checkpoint
from seo_cli.config import EarlyStoppingConfig, TrainerConfig
from seo_cli.data.batches import DeviceBatches
from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.errors import UserError
from seo_cli.evaluation import Scorer, predict
from seo_cli.loggers import MetricsSink
from seo_cli.metrics import regression_report
from seo_cli.runtime import check_precision, pick_device, seed_worker
from seo_cli.trainer import FitResult, fit

DataLike = DataLoader | Dataset | Iterable | tuple[Tensor, Tensor]
TaskTypes = str | dict[str, str]  # one task type, or one per output of a model returning a dict
SCHEDULERS = {"cosine": schedulers.cosine, "warmup_cosine": schedulers.warmup_cosine, "step": schedulers.step, "plateau": schedulers.plateau}


class ModelTrainer:
    """Train a model of your own with seo-cli's loop: validation, metrics, early stopping, checkpoints,
    exact resume, metrics.jsonl.

    Args:
        model: any module; ``model(inputs)`` must return what ``loss_fn`` takes with the targets (a dict
            of outputs with a dict of targets when ``task_type`` is a dict).
        train_data: training batches (see the module docstring for the accepted forms).
        val_data: validation batches, or None to train without validation.
        config: the loop's knobs (``seo_cli.config.TrainerConfig``: epochs, precision, monitor, mode,
            accumulate_grad_batches, gradient_clip_val, early_stopping, ema, ...); ``**knobs`` override
            its fields by name.
        task_type: classification (logits [B, K]) or regression (outputs [B] or [B, 1]); or a dict of
            them, one per key of the model's output dict (several targets).
        loss_fn: defaults to cross entropy for classification and MSE for regression, summed over targets.
        optimizer: a ready optimizer over ``model.parameters()``; defaults to AdamW(lr, weight_decay).
        scheduler: a torch LR scheduler, or a name (cosine, warmup_cosine, step, plateau) built with
            ``scheduler_args`` over the run's optimizer steps.
        drop_last: drop the last training batch of an epoch when it is short.
        output_dir: where ``metrics.jsonl`` and ``checkpoints/{last,best}.pt`` go; None writes nothing.
        resume: ``auto`` (the latest checkpoint in ``output_dir``) or a checkpoint path: continue exactly.

    Setting an attribute that is not one of these raises (``trainer.criterion`` is ``loss_fn``'s alias).
    """

    _ATTRIBUTES = {
        "model", "loss_fn", "optimizer", "scheduler", "config", "device", "targets", "train_batches",
        "val_batches", "output_dir", "resume",
    }  # fmt: skip

    def __init__(
        self,
        model: nn.Module,
        train_data: DataLike,
        val_data: DataLike | None = None,
        *,
        config: TrainerConfig | None = None,
        task_type: TaskTypes = CLASSIFICATION,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scheduler_args: dict[str, Any] | None = None,
        batch_size: int = 128,
        drop_last: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        device: str = "auto",
        output_dir: str | Path | None = None,
        resume: str | Path | None = None,
        **knobs: Any,
    ) -> None:
        self.targets = _targets(task_type)
        self.config = _trainer_config(config, knobs, has_val=val_data is not None)
        self.device = pick_device(device)
        check_precision(self.config.precision, self.device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn or _default_loss(self.targets)
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        seed = self.config.seed
        self.train_batches = _batches(train_data, batch_size, self.device, shuffle=True, seed=seed, drop_last=drop_last)
        self.val_batches = _batches(val_data, batch_size, self.device) if val_data is not None else None
        self.scheduler = _scheduler(scheduler, scheduler_args, self.optimizer, self.train_batches, self.config)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.resume = resume

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "criterion":
            name = "loss_fn"
        if name not in self._ATTRIBUTES:
            raise AttributeError(
                f"ModelTrainer has no setting {name!r}; set one of {', '.join(sorted(self._ATTRIBUTES))}, "
                "or pass the loop's knobs as config=TrainerConfig(...)."
            )
        object.__setattr__(self, name, value)

    @property
    def criterion(self) -> Callable[[Any, Any], Tensor]:
        return self.loss_fn

    def train(self) -> FitResult:
        """Run the loop; returns the per-epoch history and the best epoch.

        Raises:
            UserError: a one-shot iterator, empty validation data, a resume checkpoint that does not fit.
        """
        sink = MetricsSink(self.output_dir / "metrics.jsonl" if self.output_dir else None, resume_step=self._resume_step())
        checkpoints = None
        if self.output_dir is not None:
            # The loop's knobs as the checkpoint's config; there is no seo-cli preprocessing to store.
            extra = {"config": OmegaConf.to_yaml(OmegaConf.structured(self.config)), "preprocessing": {}}
            checkpoints = CheckpointManager(self.output_dir / "checkpoints", extra, mode=self.config.mode)
        scorer = Scorer(self.targets, precision=self.config.precision)
        validate = None
        if self.val_batches is not None:
            validate = lambda model: scorer.evaluate(model, self.val_batches, "val", self.loss_fn).metrics  # noqa: E731
        try:
            return fit(
                self.model,
                self.optimizer,
                self.loss_fn,
                self.train_batches,
                self.config,
                validate=validate,
                scheduler=self.scheduler,
                sink=sink,
                checkpoints=checkpoints,
                resume_from=self._resume_state(),
            )
        finally:
            sink.close()

    def _resume_path(self) -> Path | None:
        if self.resume is None:
            return None
        if str(self.resume) == "auto":
            if self.output_dir is None:
                raise UserError("resume='auto' needs output_dir, where the checkpoints are.")
            return latest_checkpoint(self.output_dir / "checkpoints")
        return Path(self.resume)

    def _resume_state(self) -> dict | None:
        path = self._resume_path()
        return load_checkpoint(path, map_location=self.device) if path is not None else None

    def _resume_step(self) -> int | None:
        path = self._resume_path()
        return load_checkpoint(path)["global_step"] if path is not None else None


class ModelEvaluator:
    """Metrics of a trained model on any batches, computed by scikit-learn."""

    def __init__(self, model: nn.Module, device: str = "auto") -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device)

    def evaluate(
        self,
        data: DataLike,
        task_type: TaskTypes = CLASSIFICATION,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        class_names: list[str] | dict[str, list[str]] | None = None,
        batch_size: int = 1024,
    ) -> dict[str, Any]:
        """Returns:
        ``{"loss": ..., "accuracy": ..., "f1_macro": ..., ..., "confusion_matrix": [[...]]}`` for
        classification, ``{"mse", "rmse", "mae", "r2", ...}`` (and ``loss`` if given) for regression,
        with ``per_output`` (one report per column) for a regression model with several outputs; with a
        dict ``task_type``, one such report per target.
        """
        batches = _batches(data, batch_size, self.device)
        targets = _targets(task_type)
        if len(targets) == 1 and targets[0].type == REGRESSION:
            outputs, labels = predict(self.model, batches)
            if outputs.ndim == 2 and outputs.shape[1] > 1:
                return _multi_output_report(outputs, labels, loss_fn)
        names = class_names if isinstance(class_names, dict) else {"target": class_names} if class_names else None
        scored = Scorer(targets, class_names=names).evaluate(self.model, batches, "eval", loss_fn)
        result: dict[str, Any] = dict(scored.reports) if isinstance(task_type, dict) else dict(scored.reports["target"])
        if "eval/loss" in scored.metrics:
            result["loss"] = scored.metrics["eval/loss"]
        return result


def _targets(task_type: TaskTypes) -> list[Target]:
    types = task_type if isinstance(task_type, dict) else {"target": task_type}
    for name, kind in types.items():
        if kind not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"task_type of {name!r} is {kind!r}; it must be 'classification' or 'regression'")
    return [Target(name, kind) for name, kind in types.items()]


def _trainer_config(config: TrainerConfig | None, knobs: dict[str, Any], has_val: bool) -> TrainerConfig:
    """``config`` (or the defaults, with plain progress lines) with ``knobs`` set by field name.

    Raises:
        TypeError: a knob that is not a field of TrainerConfig.
    """
    fields = {f.name for f in dataclasses.fields(TrainerConfig)}
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise TypeError(f"ModelTrainer got {', '.join(unknown)}, which is not a trainer knob; the knobs are {', '.join(sorted(fields))}")
    if isinstance(knobs.get("early_stopping"), dict):
        knobs["early_stopping"] = EarlyStoppingConfig(**knobs["early_stopping"])
    base = config or TrainerConfig(progress="plain", seed=0, monitor="val/loss" if has_val else "train/loss")
    return dataclasses.replace(base, **knobs)


def _default_loss(targets: list[Target]) -> Callable[[Any, Any], Tensor]:
    """Cross entropy for classification, MSE for regression; summed over the targets of dict outputs."""

    def term(kind: str, out: Tensor, y: Tensor) -> Tensor:
        if kind == CLASSIFICATION:
            return F.cross_entropy(out.float(), y)
        return F.mse_loss(out.reshape(-1).float(), y.reshape(-1).float())

    if len(targets) == 1 and targets[0].name == "target":
        return lambda out, y: term(targets[0].type, out, y)
    return lambda out, y: sum(term(t.type, out[t.name], y[t.name]) for t in targets)


def _scheduler(scheduler: Any, args: dict[str, Any] | None, optimizer: torch.optim.Optimizer, batches: Any, config: TrainerConfig) -> Any:
    """A scheduler object as given, or one built by name over the run's optimizer steps.

    Raises:
        UserError: an unknown name, or a batch source without a length to count steps by.
    """
    if not isinstance(scheduler, str):
        return scheduler
    if scheduler not in SCHEDULERS:
        raise UserError(f"scheduler={scheduler!r} is not a schedule; use one of {', '.join(SCHEDULERS)}, or pass a torch scheduler.")
    if not hasattr(batches, "__len__"):
        raise UserError(f"scheduler={scheduler!r} needs the number of batches per epoch; pass a DataLoader or tensors with a length.")
    steps_per_epoch = -(-len(batches) // config.accumulate_grad_batches)
    args = dict(args or {})
    if scheduler == "plateau":
        args = {"monitor": config.monitor, "mode": config.mode, "factor": 0.5, "patience": 2} | args
    return SCHEDULERS[scheduler](optimizer, total_steps=steps_per_epoch * config.epochs, steps_per_epoch=steps_per_epoch, **args)


def _batches(data: DataLike, batch_size: int, device: torch.device, shuffle: bool = False, seed: int = 0, drop_last: bool = False):
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor | dict) for t in data):
        x, y = data
        return _TensorPairBatches(
            DeviceBatches(
                {"x": x} if isinstance(x, Tensor) else x,
                {"y": y} if isinstance(y, Tensor) else y,
                batch_size=batch_size,
                device=device,
                shuffle=shuffle,
                seed=seed,
                drop_last=drop_last,
            ),
            unwrap_x=isinstance(x, Tensor),
            unwrap_y=isinstance(y, Tensor),
        )
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            data, batch_size=batch_size, shuffle=shuffle, generator=generator, worker_init_fn=seed_worker, drop_last=drop_last
        )
    return data


class _TensorPairBatches:
    """DeviceBatches over input and target tensors (or dicts of them), yielding what the model takes."""

    def __init__(self, batches: DeviceBatches, unwrap_x: bool, unwrap_y: bool) -> None:
        self.batches, self.unwrap_x, self.unwrap_y = batches, unwrap_x, unwrap_y
        self.total_rows = batches.total_rows

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for inputs, targets in self.batches:
            yield (inputs["x"] if self.unwrap_x else inputs), (targets["y"] if self.unwrap_y else targets)


def _multi_output_report(outputs: Tensor, labels: Tensor, loss_fn: Callable | None) -> dict[str, Any]:
    """A regression model with K outputs: the metrics over all of them (averaged uniformly, as
    scikit-learn does) and one report per output column."""
    y_pred, y_true = outputs.cpu().numpy(), labels.reshape(outputs.shape).float().cpu().numpy()
    per_output = [regression_report(y_true[:, k], y_pred[:, k]) for k in range(y_pred.shape[1])]
    result: dict[str, Any] = {key: float(np.mean([r[key] for r in per_output])) for key in per_output[0] if isinstance(per_output[0][key], float)}
    result["per_output"] = per_output
    if loss_fn is not None:
        result["loss"] = loss_fn(outputs, labels.to(outputs.device)).item()
    return result

"""Predictions and metrics over batches: what validation, ``seo-eval`` and ``seo-predict`` share.

A batch is a pair ``(inputs, labels)`` of tensors or of dicts / lists / tuples of tensors (a pytree);
torch's pytree utilities walk them, so one function handles every shape.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from seo_cli import distributed
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, RANKING, RATE, TRIALS_KEY, WEIGHT_KEY, Target
from seo_cli.errors import UserError
from seo_cli.metrics import (
    CALIBRATION_BINS,
    NDCG_AT,
    Curves,
    as_numpy,
    flatten,
    ranking_curves,
    target_reports,
)
from seo_cli.runtime import autocast

Batch = Any  # a tensor, or a dict / list / tuple of tensors


class TrainingDiverged(UserError):
    """The loss, the gradients or the weights stopped being finite; the message names the step."""


def move_to(batch: Batch, device: torch.device) -> Batch:
    return pytree.tree_map(lambda t: t.to(device, non_blocking=True) if isinstance(t, Tensor) else t, batch)


def batch_size_of(batch: Batch) -> int:
    """Rows of a batch: the first dimension of its first tensor."""
    return next(t for t in pytree.tree_leaves(batch) if isinstance(t, Tensor)).shape[0]


def concat(parts: list[Batch]) -> Batch:
    """Batches of the same structure joined along their rows.

    Raises:
        UserError: no batches at all (an empty evaluation split).
    """
    if not parts:
        raise UserError(
            "the evaluation data has no batches; give validation or test data with at least one row."
        )
    leaves = [pytree.tree_flatten(part)[0] for part in parts]
    spec = pytree.tree_flatten(parts[0])[1]
    return pytree.tree_unflatten([torch.cat(column) for column in zip(*leaves, strict=True)], spec)


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[tuple[Batch, Batch]], precision: str = "32"
) -> tuple[Batch, Batch]:
    """Model outputs (in float32) and labels of every batch, concatenated on the device (no host transfer here)."""
    model.eval()
    device = next(model.parameters()).device
    outputs, labels = [], []
    for inputs, y in batches:
        with autocast(device, precision):
            out = model(move_to(inputs, device))
        outputs.append(pytree.tree_map(lambda t: t.float() if t.is_floating_point() else t, out))
        labels.append(move_to(y, device))
    return concat(outputs), concat(labels)


@dataclass
class Evaluation:
    """Scalar metrics, full reports, and the host arrays they came from (standardised regression units)."""

    metrics: dict[str, float]
    reports: dict[str, dict]
    predictions: dict[str, Any]  # class probabilities [N, K], or values [N]
    labels: dict[str, Any]  # a ranking target's: its relevance
    curves: dict[str, Curves]  # per classification target: its ROC and precision-recall curves
    groups: dict[str, Any] = field(default_factory=dict)  # per ranking target: each row's group code

    @property
    def sample_weight(self) -> Any:
        """The evaluated rows' weights (``data.weight_column``), or None."""
        return self.labels.get(WEIGHT_KEY)

    @property
    def trials(self) -> Any:
        """The evaluated rows' trials (``data.trials_column``) of rate targets, or None."""
        return self.labels.get(TRIALS_KEY)


@dataclass(frozen=True)
class Scorer:
    """What turns outputs into metrics: the targets, their class names and scales, and the precision."""

    targets: list[Target]
    target_scale: dict[str, tuple[float, float]] | None = None  # per regression target: (mean, std)
    class_names: dict[str, list[str]] | None = None  # and a multilabel target's labels
    precision: str = "32"
    ndcg_at: list[int] | tuple[int, ...] = NDCG_AT  # ranking targets: the k of ndcg@k
    calibration_bins: int = CALIBRATION_BINS  # of the expected calibration error

    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[tuple[Batch, Batch]],
        split: str,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
    ) -> Evaluation:
        """Loss and metrics of ``model`` on every row of ``batches``, with the predictions and labels.

        The loss is computed once over all rows, so it is the exact mean, not a mean of batch means; the
        outputs move to the host once. Under DDP each rank predicts its shard of ``batches`` and the rows
        of all ranks are gathered first (``batches.total_rows``: the split's rows), so every rank computes
        the metrics of the whole split.

        Raises:
            TrainingDiverged: the model's predictions are not finite.
        """
        outputs, labels = self.predict(model, batches, split)
        return self.score(outputs, labels, split, loss_fn)

    def predict(
        self, model: nn.Module, batches: Iterable[tuple[Batch, Batch]], split: str
    ) -> tuple[Batch, Batch]:
        """The outputs and labels of every row of ``batches`` (of all ranks under DDP), on the device."""
        outputs, labels = predict(model, batches, self.precision)
        if distributed.enabled():
            outputs = distributed.gather_rows(outputs, batches.total_rows)
            labels = distributed.gather_rows(labels, batches.total_rows)
        return outputs, labels

    def score(
        self, outputs: Batch, labels: Batch, split: str, loss_fn: Callable[[Any, Any], Tensor] | None = None
    ) -> Evaluation:
        """Loss and metrics of the outputs of :meth:`predict`.

        Raises:
            TrainingDiverged: the predictions are not finite.
        """
        metrics: dict[str, float] = {}
        if loss_fn is not None:
            metrics[f"{split}/loss"] = loss_fn(outputs, labels).item()
            if hasattr(loss_fn, "terms"):
                metrics |= {
                    f"{split}/{name}/loss": v.item() for name, v in loss_fn.terms(outputs, labels).items()
                }
        if isinstance(labels, Tensor):
            labels = {self.targets[0].name: labels}
        ranked = {t.name for t in self.targets if t.type == RANKING}
        # A ranking target's labels are [rows, 2]: the relevance and the group code.
        groups = {name: labels[name][:, 1].cpu().numpy() for name in ranked}
        multilabel = {t.name for t in self.targets if t.type == MULTILABEL}  # 0/1 [rows, labels]: kept 2-D
        label_arrays = {}
        for name, y in labels.items():
            y = y[:, 0] if name in ranked else y
            label_arrays[name] = (y if name in multilabel else y.reshape(-1)).cpu().numpy()
        predictions = as_numpy(outputs, self.targets)
        diverged = [name for name, values in predictions.items() if not np.isfinite(values).all()]
        if diverged:
            raise TrainingDiverged(
                f"the model's {split} predictions for {', '.join(diverged)} are NaN or infinite (its weights have "
                "diverged); lower learning_rate or set trainer.gradient_clip_val=1.0."
            )
        weight, trials = label_arrays.get(WEIGHT_KEY), label_arrays.get(TRIALS_KEY)
        if weight is not None and not weight.any():
            raise UserError(
                f"every {split} row weighs 0 in the weight column, so there is nothing to score; "
                "score rows of which some have a positive weight."
            )
        rates = [t.name for t in self.targets if t.type == RATE]
        if rates and not (trials * (1 if weight is None else weight)).any():
            raise UserError(
                f"rate target {rates[0]!r} has no trials in the {split} rows (every row has 0 trials, or weighs 0), "
                "so there is no rate to score; score rows with trials."
            )
        curves = {
            t.name: ranking_curves(
                label_arrays[t.name], predictions[t.name], self._names(t.name, predictions), weight
            )
            for t in self.targets
            if t.type == CLASSIFICATION
        }
        reports = target_reports(
            predictions, label_arrays, self.targets, self.target_scale, self.class_names, curves, weight, trials,
            groups, self.ndcg_at, self.calibration_bins,
        )
        return Evaluation(metrics | flatten(reports, split), reports, predictions, label_arrays, curves, groups)

    def _names(self, target: str, predictions: dict[str, np.ndarray]) -> list[str]:
        """A classification target's class names, or their indices as text."""
        names = (self.class_names or {}).get(target)
        return names or [str(i) for i in range(predictions[target].shape[1])]

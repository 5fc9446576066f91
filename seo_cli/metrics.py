"""Per-target metrics, computed by scikit-learn on predictions gathered once per evaluation.

Keys are slash-named: ``<split>/<target>/<metric>``, e.g. ``val/intent/accuracy``, ``val/ctr/r2``.
"""

import math
import warnings

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize
from torch import Tensor

from seo_cli.data.spec import CLASSIFICATION, Target

CLASSIFICATION_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "average_precision",
    "log_loss",
)
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2", "spearman")
# Direction of each metric, for best-checkpoint selection and sweep ranking.
HIGHER_IS_BETTER = {m for m in CLASSIFICATION_METRICS if m != "log_loss"} | {"r2", "spearman"}


def metric_names(targets: list[Target], split: str) -> list[str]:
    """Every scalar name a run logs for ``split``: its loss, each target's loss and each target's metrics."""
    names = [f"{split}/loss"]
    for t in targets:
        per_target = CLASSIFICATION_METRICS if t.type == CLASSIFICATION else REGRESSION_METRICS
        names += [f"{split}/{t.name}/loss"] + [f"{split}/{t.name}/{m}" for m in per_target]
    return names


def as_numpy(outputs: dict[str, Tensor] | Tensor, targets: list[Target]) -> dict[str, np.ndarray]:
    """Move model outputs to the host once: class probabilities for classification, values for regression."""
    if isinstance(outputs, Tensor):
        outputs = {targets[0].name: outputs}
    arrays = {}
    for t in targets:
        out = outputs[t.name].detach().float()
        arrays[t.name] = (
            (torch.softmax(out, dim=-1) if t.type == CLASSIFICATION else out.reshape(-1)).cpu().numpy()
        )
    return arrays


def classification_report(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str] | None = None
) -> dict:
    """All classification metrics of one target, the confusion matrix and the per-class report."""
    num_classes = proba.shape[1]
    labels = list(range(num_classes))
    names = class_names or [str(i) for i in labels]
    y_pred = proba.argmax(axis=1)
    result = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
    }
    for average in ("weighted", "macro"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        result |= {f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f}
    result["roc_auc"] = _roc_auc(y_true, proba, labels)
    result["average_precision"] = _average_precision(y_true, proba, labels)
    # Clip so a confidently wrong float32 probability of exactly 0 gives a large, finite loss.
    result["log_loss"] = skm.log_loss(y_true, np.clip(proba, 1e-7, 1.0), labels=labels)
    result = {k: float(v) for k, v in result.items()}
    result["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    per_class = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    result["per_class"] = {name: {k: float(v) for k, v in per_class[name].items()} for name in names}
    result["class_names"] = names
    return result


def regression_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """MSE, RMSE, MAE, R^2 and Spearman's rank correlation (what matters for ranking positions)."""
    mse = skm.mean_squared_error(y_true, y_pred)
    with warnings.catch_warnings():
        # Constant predictions (an untrained model) have no rank correlation: NaN, not a warning.
        warnings.simplefilter("ignore")
        spearman = stats.spearmanr(y_true, y_pred).statistic if len(y_true) > 1 else math.nan
    return {
        "mse": float(mse),
        "rmse": math.sqrt(mse),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": float(skm.r2_score(y_true, y_pred)),
        "spearman": float(spearman),
    }


def _average_precision(y_true: np.ndarray, proba: np.ndarray, labels: list[int]) -> float:
    """Area under the precision-recall curve: of the positive class, or one-vs-rest macro over present classes."""
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if len(labels) == 2:
        return float(skm.average_precision_score(y_true, proba[:, 1]))
    onehot = label_binarize(y_true, classes=labels)[:, present]
    return float(skm.average_precision_score(onehot, proba[:, present], average="macro"))


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, labels: list[int]) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")  # undefined with one class in the evaluated rows
    if len(labels) == 2:
        return skm.roc_auc_score(y_true, proba[:, 1])
    if len(present) < len(labels):
        # One-vs-rest macro over the classes present; sklearn refuses absent columns.
        proba = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
        y_true = np.searchsorted(present, y_true)
        if len(present) == 2:
            # sklearn's one-vs-rest wants 3+ classes; with two, both one-vs-rest AUCs equal this one.
            return skm.roc_auc_score(y_true, proba[:, 1])
    return skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro")


def target_reports(
    predictions: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    targets: list[Target],
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
) -> dict[str, dict]:
    """Full report per target; regression values are mapped back to original units first."""
    reports = {}
    for t in targets:
        if t.type == CLASSIFICATION:
            names = (class_names or {}).get(t.name)
            reports[t.name] = classification_report(labels[t.name], predictions[t.name], names)
        else:
            mean, std = (target_scale or {}).get(t.name, (0.0, 1.0))
            reports[t.name] = regression_report(labels[t.name] * std + mean, predictions[t.name] * std + mean)
    return reports


def flatten(reports: dict[str, dict], split: str) -> dict[str, float]:
    """The scalar metrics of ``target_reports`` as ``{split}/{target}/{metric}`` keys."""
    return {
        f"{split}/{name}/{key}": value
        for name, report in reports.items()
        for key, value in report.items()
        if isinstance(value, float)
    }


def metric_mode(name: str) -> str:
    """``max`` for a metric that grows as the model improves (``val/intent/accuracy``), ``min`` otherwise."""
    return "max" if name.rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"

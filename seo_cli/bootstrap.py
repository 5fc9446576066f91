"""Bootstrap confidence intervals of the headline metrics, resampling the evaluated rows.

The same seeded resamples serve every model evaluated on the same rows, so the difference of two
models' metrics gets its own (paired) interval: if it excludes 0, B is better than A on these rows
beyond resampling noise.
"""

import numpy as np
from sklearn import metrics as skm

from seo_cli.data.spec import CLASSIFICATION

HEADLINE = {CLASSIFICATION: ("accuracy", "f1_macro", "roc_auc"), "regression": ("r2", "mae", "rmse")}
CHUNK = 100  # resamples materialised at once: 100 x rows indices stay small for large test sets


def resample_indices(num_rows: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, num_rows]`` row indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, num_rows, size=(resamples, num_rows))


def metric_samples(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, indices: np.ndarray
) -> dict[str, np.ndarray]:
    """Each headline metric on each resample: ``{metric: [resamples]}``.

    Args:
        y_pred: class probabilities ``[N, K]`` for classification, values ``[N]`` for regression.
    """
    parts: dict[str, list[np.ndarray]] = {m: [] for m in HEADLINE[task]}
    for start in range(0, len(indices), CHUNK):
        idx = indices[start : start + CHUNK]
        values = (
            _classification(y_true, y_pred, idx)
            if task == CLASSIFICATION
            else _regression(y_true, y_pred, idx)
        )
        for name, v in values.items():
            parts[name].append(v)
    return {name: np.concatenate(v) for name, v in parts.items()}


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval; NaN resamples (an AUC with one class drawn) are left out."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _classification(y_true: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    num_classes = proba.shape[1]
    y, pred = y_true[idx], proba.argmax(axis=1)[idx]  # [R, N] each
    accuracy = (y == pred).mean(axis=1)
    # Per-resample confusion counts with one bincount: cell (r, true, predicted).
    offsets = np.arange(len(idx))[:, None] * num_classes * num_classes
    counts = np.bincount((offsets + y * num_classes + pred).ravel(), minlength=len(idx) * num_classes**2)
    confusion = counts.reshape(len(idx), num_classes, num_classes)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # (tp + fp) + (tp + fn)
    # As scikit-learn's f1_score(average="macro", labels=all classes, zero_division=0).
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape, dtype=float), where=denominator > 0)
    roc_auc = np.array([_roc_auc(y_true[i], proba[i]) for i in idx])
    return {"accuracy": accuracy, "f1_macro": f1.mean(axis=1), "roc_auc": roc_auc}


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    # One-vs-rest macro over the classes drawn, as metrics.classification_report computes it.
    sub = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
    codes = np.searchsorted(present, y_true)
    if len(present) == 2:
        return float(skm.roc_auc_score(codes, sub[:, 1]))
    return float(skm.roc_auc_score(codes, sub, multi_class="ovr", average="macro"))


def _regression(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    y, pred = y_true[idx], y_pred[idx]
    error = pred - y
    ss_res = (error**2).sum(axis=1)
    ss_tot = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    r2 = np.divide(ss_res, ss_tot, out=np.full(len(idx), np.nan), where=ss_tot > 0)
    return {"r2": 1 - r2, "mae": np.abs(error).mean(axis=1), "rmse": np.sqrt((error**2).mean(axis=1))}

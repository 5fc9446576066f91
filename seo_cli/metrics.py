"""Per-target metrics, computed by scikit-learn on predictions gathered once per evaluation.

Keys are slash-named: ``<split>/<target>/<metric>``, e.g. ``val/intent/accuracy``, ``val/ctr/r2``.
"""

import math
import warnings

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm
from torch import Tensor

from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, MULTILABEL_THRESHOLD, Target

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
    "ece",
    "brier",
)
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2", "spearman")
MULTILABEL_METRICS = (
    "subset_accuracy",  # rows whose predicted label set is exactly right
    "hamming_loss",  # share of (row, label) cells predicted wrong
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "f1_macro",  # over every label, one absent from the rows scoring 0 (scikit-learn's zero_division=0)
    "mean_average_precision",  # average_precision_score macro over the labels with a positive row
    "log_loss",  # mean binary cross entropy over rows and labels
)
LOWER_IS_BETTER = {"log_loss", "ece", "brier", "hamming_loss"}
# Direction of each metric, for best-checkpoint selection and sweep ranking.
HIGHER_IS_BETTER = {m for m in (*CLASSIFICATION_METRICS, *MULTILABEL_METRICS) if m not in LOWER_IS_BETTER} | {
    "r2",
    "spearman",
}
CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


def metric_names(targets: list[Target], split: str) -> list[str]:
    """Every scalar name a run logs for ``split``: its loss, each target's loss and each target's metrics."""
    names = [f"{split}/loss"]
    for t in targets:
        per_target = {CLASSIFICATION: CLASSIFICATION_METRICS, MULTILABEL: MULTILABEL_METRICS}.get(t.type, REGRESSION_METRICS)
        names += [f"{split}/{t.name}/loss"] + [f"{split}/{t.name}/{m}" for m in per_target]
    return names


def as_numpy(outputs: dict[str, Tensor] | Tensor, targets: list[Target]) -> dict[str, np.ndarray]:
    """Move model outputs to the host once: class probabilities for classification, one probability per
    label ``[N, L]`` for multilabel, values for regression."""
    if isinstance(outputs, Tensor):
        outputs = {targets[0].name: outputs}
    arrays = {}
    for t in targets:
        out = outputs[t.name].detach().float()
        if t.type == CLASSIFICATION:
            out = torch.softmax(out, dim=-1)
        elif t.type == MULTILABEL:
            out = torch.sigmoid(out).reshape(len(out), -1)  # a one-label head gives [N]
        else:
            out = out.reshape(-1)
        arrays[t.name] = out.cpu().numpy()
    return arrays


def classification_report(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str] | None = None,
    curves: "Curves | None" = None,
    bins: int = CALIBRATION_BINS,
) -> dict:
    """All classification metrics of one target, the confusion matrix, the per-class report and the
    reliability diagram's bins (``reliability``).

    Args:
        curves: this target's :func:`ranking_curves`, when the caller has them (computed here otherwise).
        bins: equal-width bins of the expected calibration error.
    """
    num_classes = proba.shape[1]
    labels = list(range(num_classes))
    names = class_names or [str(i) for i in labels]
    y_pred = proba.argmax(axis=1)
    # The confusion counts with one bincount, and every score below from them: each of scikit-learn's
    # scoring functions checks and counts all the labels again (a second per target at 1,000,000 rows).
    # The same divisions as precision_recall_fscore_support(zero_division=0) makes, so the same values.
    confusion = np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, -1)
    tp, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall, f1 = _divide(tp, predicted), _divide(tp, support), _divide(2 * tp, support + predicted)
    result = {
        "accuracy": tp.sum() / len(y_true),
        "balanced_accuracy": recall[support > 0].mean(),  # as balanced_accuracy_score: over the true classes
    }
    for average, weights in (("weighted", support), ("macro", None)):
        result |= {
            f"precision_{average}": np.average(precision, weights=weights),
            f"recall_{average}": np.average(recall, weights=weights),
            f"f1_{average}": np.average(f1, weights=weights),
        }
    roc, pr = curves if curves is not None else ranking_curves(y_true, proba, names)
    present = np.flatnonzero(support)
    if len(present) < 2:
        result["roc_auc"] = float("nan")  # undefined with one class in the evaluated rows
    elif num_classes == 2 or len(present) == num_classes:
        # As roc_auc_score (one-vs-rest macro with more than two classes): the mean area of the curves.
        result["roc_auc"] = np.mean([area for *_, area in roc])
    else:
        result["roc_auc"] = _roc_auc_of_present(y_true, proba, present)
    # As average_precision_score: of the positive class, or one-vs-rest macro over the classes present.
    result["average_precision"] = np.mean([area for *_, area in pr]) if len(present) >= 2 else float("nan")
    # Clip so a confidently wrong float32 probability of exactly 0 gives a large, finite loss.
    result["log_loss"] = skm.log_loss(y_true, np.clip(proba, 1e-7, 1.0), labels=labels)
    reliability = reliability_bins(y_true, proba, bins)
    result["ece"] = expected_calibration_error(reliability)
    result["brier"] = brier_score(y_true, proba)
    result = {k: float(v) for k, v in result.items()}
    result["reliability"] = reliability
    result["confusion_matrix"] = confusion.tolist()
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": float(n)}
        for name, p, r, f, n in zip(names, precision, recall, f1, support, strict=True)
    }
    result["class_names"] = names
    return result


Curve = tuple[str, np.ndarray, np.ndarray, float]  # (class name, x, y, area)
Curves = tuple[list[Curve], list[Curve]]  # (ROC curves, precision-recall curves)


def ranking_curves(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> Curves:
    """One-vs-rest ROC curves (class, fpr, tpr, AUC) of the classes with positive and negative rows, and
    precision-recall curves (class, recall, precision, average precision) of the classes with positive
    rows; binary: class 1 only. What the report plots, and whose areas the metrics report.
    """
    roc, pr = [], []
    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    for k in classes:
        positive, score = y_true == k, proba[:, k]
        if not positive.any():
            continue
        if positive.all():  # no negative rows: no ROC curve, and precision 1 at every threshold
            precision, recall, _ = skm.precision_recall_curve(positive, score)
        else:
            # One sort of the scores for both curves (each sorts 1,000,000 rows in 0.15 s): the ROC curve
            # at every threshold holds the counts of true and false positives precision_recall_curve
            # divides, exactly (integers far below 2^53).
            fpr, tpr, _ = skm.roc_curve(positive, score, drop_intermediate=False)
            roc.append((class_names[k], fpr, tpr, float(skm.auc(fpr, tpr))))
            tps, fps = np.rint(tpr[1:] * positive.sum()), np.rint(fpr[1:] * (~positive).sum())
            precision = np.r_[(tps / (tps + fps))[::-1], 1.0]
            recall = np.r_[(tps / tps[-1])[::-1], 0.0]
        # average_precision_score's step sum over the curve.
        ap = max(0.0, -np.sum(np.diff(recall) * precision[:-1]))
        pr.append((class_names[k], recall, precision, float(ap)))
    return roc, pr


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """The reliability diagram of one target, over ``bins`` equal-width bins of [0, 1] (the non-empty ones):
    binary, P(class 1) against the share of class 1; more classes, the top-label confidence (the largest
    probability) against the share of rows whose top class is right. The bins of
    ``sklearn.calibration.calibration_curve(strategy="uniform")``: (lower, upper], the first closed.

    Returns:
        ``{"bins", "confidence": [mean score per bin], "accuracy": [share per bin], "rows": [rows per bin]}``.
    """
    if proba.shape[1] == 2:
        score, hit = proba[:, 1], y_true == 1
    else:
        score, hit = proba.max(axis=1), proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], score)
    rows = np.bincount(which, minlength=bins)
    kept = rows > 0
    total = np.bincount(which, weights=score.astype(np.float64), minlength=bins)
    hits = np.bincount(which, weights=hit.astype(np.float64), minlength=bins)
    return {
        "bins": bins,
        "confidence": (total[kept] / rows[kept]).tolist(),
        "accuracy": (hits[kept] / rows[kept]).tolist(),
        "rows": rows[kept].tolist(),
    }


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """scikit-learn's ``brier_score_loss(y_true, proba, labels=range(K))``: binary, the mean squared error
    of P(class 1); more classes, the mean over rows of the squared distance of the probability vector to
    the one-hot label. Written out: scikit-learn's validation of the rows takes 0.5 s at 1,000,000 rows."""
    if proba.shape[1] == 2:
        return float(np.mean((proba[:, 1].astype(np.float64) - (y_true == 1)) ** 2))
    p = proba.astype(np.float64)
    true_p = np.take_along_axis(p, y_true[:, None], axis=1)[:, 0]
    return float(np.mean((p**2).sum(axis=1) - 2 * true_p + 1))


def expected_calibration_error(reliability: dict) -> float:
    """ECE: the mean over rows of |accuracy - confidence| of each row's bin (Guo et al. 2017)."""
    rows = np.asarray(reliability["rows"], dtype=np.float64)
    gap = np.abs(np.asarray(reliability["accuracy"]) - np.asarray(reliability["confidence"]))
    return float((rows * gap).sum() / rows.sum()) if rows.sum() else math.nan


def multilabel_report(y_true: np.ndarray, proba: np.ndarray, label_names: list[str] | None = None) -> dict:
    """The metrics of one multilabel target (``MULTILABEL_METRICS``) and its per-label report, labels
    predicted where their probability is at least ``MULTILABEL_THRESHOLD``; scikit-learn computes them.

    Args:
        y_true: 0/1 ``[rows, labels]``; proba: the probability of each label, ``[rows, labels]``.
    """
    y_true = y_true.astype(np.int64)
    names = label_names or [str(i) for i in range(proba.shape[1])]
    y_pred = (proba >= MULTILABEL_THRESHOLD).astype(np.int64)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    present = np.flatnonzero(y_true.sum(axis=0) > 0)
    mean_ap = (
        skm.average_precision_score(y_true[:, present], proba[:, present], average="macro") if len(present) else math.nan
    )
    p = np.clip(proba.astype(np.float64), 1e-7, 1 - 1e-7)
    result = {
        "subset_accuracy": skm.accuracy_score(y_true, y_pred),
        "hamming_loss": skm.hamming_loss(y_true, y_pred),
        "precision_micro": skm.precision_score(y_true, y_pred, average="micro", zero_division=0),
        "recall_micro": skm.recall_score(y_true, y_pred, average="micro", zero_division=0),
        "f1_micro": skm.f1_score(y_true, y_pred, average="micro", zero_division=0),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "mean_average_precision": mean_ap,
        "log_loss": -np.mean(y_true * np.log(p) + (1 - y_true) * np.log1p(-p)),
    }
    result = {k: float(v) for k, v in result.items()}
    result["per_label"] = {
        name: {"precision": float(pr), "recall": float(r), "f1-score": float(f), "support": float(n)}
        for name, pr, r, f, n in zip(names, precision, recall, f1, support, strict=True)
    }
    result["label_names"] = names
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


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _roc_auc_of_present(y_true: np.ndarray, proba: np.ndarray, present: np.ndarray) -> float:
    """One-vs-rest macro AUC over the classes present, on their probabilities renormalised over them
    (scikit-learn refuses absent columns); with two, their binary AUC (both one-vs-rest AUCs equal it)."""
    proba = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
    y_true = np.searchsorted(present, y_true)
    if len(present) == 2:
        return skm.roc_auc_score(y_true, proba[:, 1])
    return skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro")


def target_reports(
    predictions: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    targets: list[Target],
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
    curves: dict[str, Curves] | None = None,
    bins: int = CALIBRATION_BINS,
) -> dict[str, dict]:
    """Full report per target; regression values are mapped back to original units first.

    Args:
        curves: the classification targets' :func:`ranking_curves`, when the caller keeps them.
        bins: equal-width bins of the classification targets' expected calibration error.
    """
    reports = {}
    for t in targets:
        if t.type == CLASSIFICATION:
            names = (class_names or {}).get(t.name)
            reports[t.name] = classification_report(
                labels[t.name], predictions[t.name], names, (curves or {}).get(t.name), bins
            )
        elif t.type == MULTILABEL:
            reports[t.name] = multilabel_report(labels[t.name], predictions[t.name], (class_names or {}).get(t.name))
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

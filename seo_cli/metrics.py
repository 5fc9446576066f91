"""Per-target metrics, computed by scikit-learn on predictions gathered once per evaluation.

Keys are slash-named: ``<split>/<target>/<metric>``, e.g. ``val/intent/accuracy``, ``val/ctr/r2``.

Row weights (``data.weight_column``) are scikit-learn's ``sample_weight``: every count, mean and curve is
weighted (the confusion matrix and the per-class support hold sums of weights), and rows of weight 0 are
left out entirely. Spearman's correlation is the one exception: it ranks the rows of positive weight
unweighted, as there is no standard weighted form. A rate target's rows weigh their trials (times the
row weight): its log loss, Brier score and MAE are those of the observed rates weighted by impressions.
"""

import math
import warnings

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm
from torch import Tensor

from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, MULTILABEL_THRESHOLD, RANKING, RATE, Target

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
RATE_METRICS = ("log_loss", "brier", "mae")  # of the predicted rate against the observed one, weighted by trials
RANKING_METRICS = ("mrr", "map")  # and ndcg@k for each k of data.ndcg_at
NDCG_AT = (1, 3, 10)
MAX_NDCG_AT = 100
MAX_NDCG_LIST = 20  # cut-offs data.ndcg_at may list
LOWER_IS_BETTER = {"log_loss", "ece", "brier", "hamming_loss", "mae"}
# Direction of each metric, for best-checkpoint selection and sweep ranking.
HIGHER_IS_BETTER = (
    {m for m in (*CLASSIFICATION_METRICS, *MULTILABEL_METRICS) if m not in LOWER_IS_BETTER}
    | {"r2", "spearman", *RANKING_METRICS}
    | {f"ndcg@{k}" for k in range(1, MAX_NDCG_AT + 1)}
)
CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


def metric_names(targets: list[Target], split: str, ndcg_at: list[int] | None = None) -> list[str]:
    """Every scalar name a run logs for ``split``: its loss, each target's loss and each target's metrics."""
    names = [f"{split}/loss"]
    for t in targets:
        per_target = {CLASSIFICATION: CLASSIFICATION_METRICS, MULTILABEL: MULTILABEL_METRICS, RATE: RATE_METRICS}.get(
            t.type, REGRESSION_METRICS
        )
        if t.type == RANKING:
            per_target = tuple(f"ndcg@{k}" for k in (ndcg_at or NDCG_AT)) + RANKING_METRICS
        names += [f"{split}/{t.name}/loss"] + [f"{split}/{t.name}/{m}" for m in per_target]
    return names


def as_numpy(outputs: dict[str, Tensor] | Tensor, targets: list[Target]) -> dict[str, np.ndarray]:
    """Move model outputs to the host once: class probabilities for classification, one probability per
    label ``[N, L]`` for multilabel, the predicted rate (the sigmoid of the output) for a rate, values for
    regression."""
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
            out = torch.sigmoid(out.reshape(-1)) if t.type == RATE else out.reshape(-1)
        arrays[t.name] = out.cpu().numpy()
    return arrays


def positive_rows(
    sample_weight: np.ndarray | None, *arrays: np.ndarray
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """The weights and ``arrays`` of the rows whose weight is above 0 (all of them without weights)."""
    if sample_weight is None:
        return None, list(arrays)
    keep = sample_weight > 0
    return sample_weight[keep].astype(np.float64), [a[keep] for a in arrays]


def classification_report(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str] | None = None,
    curves: "Curves | None" = None,
    bins: int = CALIBRATION_BINS,
    sample_weight: np.ndarray | None = None,
) -> dict:
    """All classification metrics of one target, the confusion matrix, the per-class report and the
    reliability diagram's bins (``reliability``).

    Args:
        curves: this target's :func:`ranking_curves`, when the caller has them (computed here otherwise).
        bins: equal-width bins of the expected calibration error.
        sample_weight: per-row weights (scikit-learn's meaning); None: every row 1.
    """
    w, (y_true, proba) = positive_rows(sample_weight, y_true, proba)
    num_classes = proba.shape[1]
    labels = list(range(num_classes))
    names = class_names or [str(i) for i in labels]
    y_pred = proba.argmax(axis=1)
    # The confusion counts with one bincount, and every score below from them: each of scikit-learn's
    # scoring functions checks and counts all the labels again (a second per target at 1,000,000 rows).
    # The same divisions as precision_recall_fscore_support(zero_division=0) makes, so the same values.
    confusion = np.bincount(y_true * num_classes + y_pred, weights=w, minlength=num_classes**2).reshape(num_classes, -1)
    tp, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall, f1 = _divide(tp, predicted), _divide(tp, support), _divide(2 * tp, support + predicted)
    result = {
        "accuracy": tp.sum() / (len(y_true) if w is None else w.sum()),
        "balanced_accuracy": recall[support > 0].mean(),  # as balanced_accuracy_score: over the true classes
    }
    for average, weights in (("weighted", support), ("macro", None)):
        result |= {
            f"precision_{average}": np.average(precision, weights=weights),
            f"recall_{average}": np.average(recall, weights=weights),
            f"f1_{average}": np.average(f1, weights=weights),
        }
    roc, pr = curves if curves is not None else ranking_curves(y_true, proba, names, w)
    present = np.flatnonzero(support)
    if len(present) < 2:
        result["roc_auc"] = float("nan")  # undefined with one class in the evaluated rows
    elif num_classes == 2 or len(present) == num_classes:
        # As roc_auc_score (one-vs-rest macro with more than two classes): the mean area of the curves.
        result["roc_auc"] = np.mean([area for *_, area in roc])
    else:
        result["roc_auc"] = _roc_auc_of_present(y_true, proba, present, w)
    # As average_precision_score: of the positive class, or one-vs-rest macro over the classes present.
    result["average_precision"] = np.mean([area for *_, area in pr]) if len(present) >= 2 else float("nan")
    # Clip so a confidently wrong float32 probability of exactly 0 gives a large, finite loss.
    result["log_loss"] = skm.log_loss(y_true, np.clip(proba, 1e-7, 1.0), labels=labels, sample_weight=w)
    reliability = reliability_bins(y_true, proba, bins, w)
    result["ece"] = expected_calibration_error(reliability)
    result["brier"] = brier_score(y_true, proba, w)
    result = {k: float(v) for k, v in result.items()}
    result["reliability"] = reliability
    result["confusion_matrix"] = confusion.tolist() if w is not None else confusion.astype(np.int64).tolist()
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": float(n)}
        for name, p, r, f, n in zip(names, precision, recall, f1, support, strict=True)
    }
    result["class_names"] = names
    return result


Curve = tuple[str, np.ndarray, np.ndarray, float]  # (class name, x, y, area)
Curves = tuple[list[Curve], list[Curve]]  # (ROC curves, precision-recall curves)


def ranking_curves(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str], sample_weight: np.ndarray | None = None
) -> Curves:
    """One-vs-rest ROC curves (class, fpr, tpr, AUC) of the classes with positive and negative rows, and
    precision-recall curves (class, recall, precision, average precision) of the classes with positive
    rows; binary: class 1 only. What the report plots, and whose areas the metrics report.
    ``sample_weight``: per-row weights, rows of weight 0 left out.
    """
    w, (y_true, proba) = positive_rows(sample_weight, y_true, proba)
    roc, pr = [], []
    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    for k in classes:
        positive, score = y_true == k, proba[:, k]
        if not positive.any():
            continue
        if positive.all():  # no negative rows: no ROC curve, and precision 1 at every threshold
            precision, recall, _ = skm.precision_recall_curve(positive, score, sample_weight=w)
        elif w is not None:  # weighted counts are not whole numbers: scikit-learn's own two curves
            fpr, tpr, _ = skm.roc_curve(positive, score, sample_weight=w, drop_intermediate=False)
            roc.append((class_names[k], fpr, tpr, float(skm.auc(fpr, tpr))))
            precision, recall, _ = skm.precision_recall_curve(positive, score, sample_weight=w)
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


def reliability_bins(
    y_true: np.ndarray, proba: np.ndarray, bins: int = CALIBRATION_BINS, sample_weight: np.ndarray | None = None
) -> dict:
    """The reliability diagram of one target, over ``bins`` equal-width bins of [0, 1] (the non-empty ones):
    binary, P(class 1) against the share of class 1; more classes, the top-label confidence (the largest
    probability) against the share of rows whose top class is right. The bins of
    ``sklearn.calibration.calibration_curve(strategy="uniform")``: (lower, upper], the first closed. With
    ``sample_weight`` the means and shares are weighted and ``weight`` is each bin's weight.

    Returns:
        ``{"bins", "confidence": [mean score per bin], "accuracy": [share per bin], "rows": [rows per bin],
        "weight": [weight per bin]}``.
    """
    if proba.shape[1] == 2:
        score, hit = proba[:, 1], y_true == 1
    else:
        score, hit = proba.max(axis=1), proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], score)
    w = np.ones(len(score)) if sample_weight is None else sample_weight.astype(np.float64)
    rows = np.bincount(which, minlength=bins)
    mass = np.bincount(which, weights=w, minlength=bins)
    kept = mass > 0
    total = np.bincount(which, weights=w * score, minlength=bins)
    hits = np.bincount(which, weights=w * hit, minlength=bins)
    return {
        "bins": bins,
        "confidence": (total[kept] / mass[kept]).tolist(),
        "accuracy": (hits[kept] / mass[kept]).tolist(),
        "rows": rows[kept].tolist(),
        "weight": mass[kept].tolist(),
    }


def brier_score(y_true: np.ndarray, proba: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """scikit-learn's ``brier_score_loss(y_true, proba, labels=range(K))``: binary, the mean squared error
    of P(class 1); more classes, the mean over rows of the squared distance of the probability vector to
    the one-hot label. Written out: scikit-learn's validation of the rows takes 0.5 s at 1,000,000 rows."""
    if proba.shape[1] == 2:
        return float(np.average((proba[:, 1].astype(np.float64) - (y_true == 1)) ** 2, weights=sample_weight))
    p = proba.astype(np.float64)
    true_p = np.take_along_axis(p, y_true[:, None], axis=1)[:, 0]
    return float(np.average((p**2).sum(axis=1) - 2 * true_p + 1, weights=sample_weight))


def expected_calibration_error(reliability: dict) -> float:
    """ECE: the (weighted) mean over rows of |accuracy - confidence| of each row's bin (Guo et al. 2017)."""
    rows = np.asarray(reliability.get("weight", reliability["rows"]), dtype=np.float64)
    gap = np.abs(np.asarray(reliability["accuracy"]) - np.asarray(reliability["confidence"]))
    return float((rows * gap).sum() / rows.sum()) if rows.sum() else math.nan


def multilabel_report(
    y_true: np.ndarray, proba: np.ndarray, label_names: list[str] | None = None, sample_weight: np.ndarray | None = None
) -> dict:
    """The metrics of one multilabel target (``MULTILABEL_METRICS``) and its per-label report, labels
    predicted where their probability is at least ``MULTILABEL_THRESHOLD``; scikit-learn computes them.

    Args:
        y_true: 0/1 ``[rows, labels]``; proba: the probability of each label, ``[rows, labels]``.
        sample_weight: per-row weights (scikit-learn's meaning); None: every row 1.
    """
    w, (y_true, proba) = positive_rows(sample_weight, y_true, proba)
    y_true = y_true.astype(np.int64)
    names = label_names or [str(i) for i in range(proba.shape[1])]
    y_pred = (proba >= MULTILABEL_THRESHOLD).astype(np.int64)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0, sample_weight=w
    )
    present = np.flatnonzero(y_true.sum(axis=0) > 0)
    mean_ap = (
        skm.average_precision_score(y_true[:, present], proba[:, present], average="macro", sample_weight=w) if len(present) else math.nan
    )
    p = np.clip(proba.astype(np.float64), 1e-7, 1 - 1e-7)
    result = {
        "subset_accuracy": skm.accuracy_score(y_true, y_pred, sample_weight=w),
        "hamming_loss": skm.hamming_loss(y_true, y_pred, sample_weight=w),
        "precision_micro": skm.precision_score(y_true, y_pred, average="micro", zero_division=0, sample_weight=w),
        "recall_micro": skm.recall_score(y_true, y_pred, average="micro", zero_division=0, sample_weight=w),
        "f1_micro": skm.f1_score(y_true, y_pred, average="micro", zero_division=0, sample_weight=w),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0, sample_weight=w),
        "mean_average_precision": mean_ap,
        "log_loss": -np.average((y_true * np.log(p) + (1 - y_true) * np.log1p(-p)).mean(axis=1), weights=w),
    }
    result = {k: float(v) for k, v in result.items()}
    result["per_label"] = {
        name: {"precision": float(pr), "recall": float(r), "f1-score": float(f), "support": float(n)}
        for name, pr, r, f, n in zip(names, precision, recall, f1, support, strict=True)
    }
    result["label_names"] = names
    return result


def regression_report(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> dict:
    """MSE, RMSE, MAE, R^2 and Spearman's rank correlation (what matters for ranking positions); weighted
    by ``sample_weight`` but Spearman's (the rows of positive weight, unweighted)."""
    w, (y_true, y_pred) = positive_rows(sample_weight, y_true, y_pred)
    mse = skm.mean_squared_error(y_true, y_pred, sample_weight=w)
    with warnings.catch_warnings():
        # Constant predictions (an untrained model) have no rank correlation: NaN, not a warning.
        warnings.simplefilter("ignore")
        spearman = stats.spearmanr(y_true, y_pred).statistic if len(y_true) > 1 else math.nan
    return {
        "mse": float(mse),
        "rmse": math.sqrt(mse),
        "mae": float(skm.mean_absolute_error(y_true, y_pred, sample_weight=w)),
        "r2": float(skm.r2_score(y_true, y_pred, sample_weight=w)),
        "spearman": float(spearman),
    }


NDCG_CELLS = 1 << 22  # padded [groups, rows] cells per call of ndcg_score: memory bounded whatever the group sizes


def ranking_report(
    relevance: np.ndarray, scores: np.ndarray, groups: np.ndarray, ndcg_at: list[int] | tuple[int, ...] = NDCG_AT
) -> dict:
    """NDCG@k (each k of ``ndcg_at``), MRR and MAP, each computed per group and averaged over the groups.

    Only groups with a relevant row (relevance > 0) count: without one, the ideal DCG is 0 (NDCG is
    undefined; scikit-learn would score the group 0 whatever the order) and there is no first relevant
    row (MRR) nor any precision to average (MAP). ``groups_scored`` says how many groups counted.

    - NDCG@k: scikit-learn's ``ndcg_score`` of the group (gain = relevance, ties in the scores averaged),
      computed for many groups at once on a padded matrix, which gives the same value per group.
    - MRR: 1 / the rank of the first row with relevance > 0, the rows ordered by score (ties by row order).
    - MAP: the mean over the relevant rows of the precision at their rank (relevance > 0 is relevant);
      scikit-learn's ``average_precision_score`` where the scores have no ties.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    order = np.lexsort((np.arange(len(scores)), -scores, groups))  # by group, then best score first
    group_sorted, rel_sorted = groups[order], relevance[order]
    starts = np.flatnonzero(np.r_[True, group_sorted[1:] != group_sorted[:-1]]) if len(order) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes) + 1  # 1 = best within the group
    which = np.repeat(np.arange(len(starts)), sizes)
    relevant = rel_sorted > 0
    has_relevant = np.bincount(which, weights=relevant, minlength=len(starts)) > 0
    # MRR: the smallest rank of a relevant row per group.
    first = np.full(len(starts), np.inf)
    np.minimum.at(first, which[relevant], rank[relevant])
    # MAP: precision at each relevant row's rank = relevant rows at or above it / its rank.
    hits = np.cumsum(relevant) - np.repeat(np.r_[0, np.cumsum(relevant)][starts], sizes)
    precision_sum = np.bincount(which, weights=np.where(relevant, hits / rank, 0.0), minlength=len(starts))
    relevant_count = np.bincount(which, weights=relevant, minlength=len(starts))
    result: dict[str, float] = {}
    kept = np.flatnonzero(has_relevant)
    for k in ndcg_at:
        result[f"ndcg@{k}"] = _mean_ndcg(rel_sorted, scores[order], starts, sizes, kept, k) if len(kept) else math.nan
    result["mrr"] = float(np.mean(1.0 / first[kept])) if len(kept) else math.nan
    result["map"] = float(np.mean(precision_sum[kept] / relevant_count[kept])) if len(kept) else math.nan
    result["groups_scored"] = float(len(kept))
    return result


def _mean_ndcg(
    relevance: np.ndarray, scores: np.ndarray, starts: np.ndarray, sizes: np.ndarray, kept: np.ndarray, k: int
) -> float:
    """The mean ``ndcg_score(k=k)`` of the groups in ``kept`` (rows grouped, from ``starts`` for ``sizes``,
    by descending score within a group): groups of similar size padded together into matrices of at
    most NDCG_CELLS cells (padding: relevance 0 and a score below every real one, so it ranks last and
    adds no gain); each matrix's mean weighs by its groups. Groups without tied scores skip
    scikit-learn's tie averaging (a Python loop per group), which gives the same values for them."""
    which = np.repeat(np.arange(len(starts)), sizes)  # each row's group
    within = np.arange(len(relevance)) - np.repeat(starts, sizes)  # its place in the group
    tie = (which[1:] == which[:-1]) & (scores[1:] == scores[:-1])
    has_tie = np.bincount(which[1:][tie], minlength=len(starts)) > 0
    floor = scores.min() - 1.0
    total = 0.0
    for tied in (False, True):
        part = kept[has_tie[kept] == tied]
        by_size = part[np.argsort(sizes[part], kind="stable")]
        position = 0
        while position < len(by_size):
            width = max(2, int(sizes[by_size[position]]))  # ndcg_score needs 2 columns; a 1-row group scores 1
            count = 1
            while position + count < len(by_size) and (count + 1) * max(width, int(sizes[by_size[position + count]])) <= NDCG_CELLS:
                width = max(width, int(sizes[by_size[position + count]]))
                count += 1
            chunk = by_size[position : position + count]
            slot = np.full(len(starts), -1)
            slot[chunk] = np.arange(count)  # each group's row of the matrix; -1: not in this chunk
            rows = np.flatnonzero(slot[which] >= 0)
            true, pred = np.zeros((count, width)), np.full((count, width), floor)
            true[slot[which[rows]], within[rows]] = relevance[rows]
            pred[slot[which[rows]], within[rows]] = scores[rows]
            total += skm.ndcg_score(true, pred, k=k, ignore_ties=not tied) * count
            position += count
    return total / len(kept)
RATE_CLIP = 1e-7  # a predicted rate of exactly 0 or 1 gives a large, finite log loss


def rate_report(rate: np.ndarray, predicted: np.ndarray, trials: np.ndarray) -> dict:
    """Log loss (the binomial negative log-likelihood per trial), Brier score and MAE of the predicted rates
    against the observed ones, each row weighted by ``trials`` (its impressions, times its row weight)."""
    w, (rate, p) = positive_rows(trials, rate.astype(np.float64), predicted.astype(np.float64))
    p = np.clip(p, RATE_CLIP, 1 - RATE_CLIP)
    log_loss = -(rate * np.log(p) + (1 - rate) * np.log1p(-p))
    return {
        "log_loss": float(np.average(log_loss, weights=w)),
        "brier": float(np.average((p - rate) ** 2, weights=w)),
        "mae": float(np.average(np.abs(p - rate), weights=w)),
    }


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _roc_auc_of_present(
    y_true: np.ndarray, proba: np.ndarray, present: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """One-vs-rest macro AUC over the classes present, on their probabilities renormalised over them
    (scikit-learn refuses absent columns); with two, their binary AUC (both one-vs-rest AUCs equal it)."""
    proba = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
    y_true = np.searchsorted(present, y_true)
    if len(present) == 2:
        return skm.roc_auc_score(y_true, proba[:, 1], sample_weight=sample_weight)
    return skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", sample_weight=sample_weight)


def target_reports(
    predictions: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    targets: list[Target],
    target_scale: dict[str, tuple[float, float]] | None = None,
    class_names: dict[str, list[str]] | None = None,
    curves: dict[str, Curves] | None = None,
    sample_weight: np.ndarray | None = None,
    trials: np.ndarray | None = None,
    groups: dict[str, np.ndarray] | None = None,
    ndcg_at: list[int] | tuple[int, ...] = NDCG_AT,
    bins: int = CALIBRATION_BINS,
) -> dict[str, dict]:
    """Full report per target; regression values are mapped back to original units first.

    Args:
        curves: the classification targets' :func:`ranking_curves`, when the caller keeps them.
        sample_weight: the row weights; None: every row 1.
        trials: the rate targets' trials (impressions) per row.
        groups: per ranking target, the group code of each row (its ``labels`` are the relevance).
        ndcg_at: the cut-offs k of a ranking target's ``ndcg@k``.
        bins: equal-width bins of the classification targets' expected calibration error.
    """
    reports = {}
    for t in targets:
        if t.type == RANKING:
            reports[t.name] = ranking_report(labels[t.name], predictions[t.name], (groups or {})[t.name], ndcg_at)
        elif t.type == CLASSIFICATION:
            names = (class_names or {}).get(t.name)
            reports[t.name] = classification_report(
                labels[t.name], predictions[t.name], names, (curves or {}).get(t.name), bins, sample_weight
            )
        elif t.type == MULTILABEL:
            names = (class_names or {}).get(t.name)
            reports[t.name] = multilabel_report(labels[t.name], predictions[t.name], names, sample_weight)
        elif t.type == RATE:
            weight = trials if sample_weight is None else sample_weight * trials
            reports[t.name] = rate_report(labels[t.name], predictions[t.name], weight)
        else:
            mean, std = (target_scale or {}).get(t.name, (0.0, 1.0))
            reports[t.name] = regression_report(
                labels[t.name] * std + mean, predictions[t.name] * std + mean, sample_weight
            )
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

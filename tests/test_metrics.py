"""Metrics against values worked out by hand on tiny examples."""

import math

import numpy as np
import pytest
import torch

from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.metrics import (
    CLASSIFICATION_METRICS,
    as_numpy,
    classification_report,
    flatten,
    metric_names,
    regression_report,
    target_reports,
)

# Three classes of 3, 2 and 1 rows; predictions (argmax) are 0, 0, 1 | 1, 1 | 0.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
PROBA = np.array(
    [
        [0.6, 0.3, 0.1],
        [0.5, 0.4, 0.1],
        [0.3, 0.6, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.5, 0.2, 0.3],
    ]
)


def auc_by_pairs(pos: list[float], neg: list[float]) -> float:
    """Probability that a positive outscores a negative, ties counting half (Mann-Whitney)."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def report() -> dict:
    return classification_report(Y_TRUE, PROBA, ["info", "nav", "buy"])


def test_accuracy_and_balanced_accuracy(report):
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # mean recall per class


def test_macro_and_weighted_precision_recall_f1(report):
    # Per class: precision 2/3, 2/3, 0; recall 2/3, 1, 0; F1 2/3, 0.8, 0; support 3, 2, 1.
    assert report["precision_macro"] == pytest.approx(4 / 9)
    assert report["recall_macro"] == pytest.approx(5 / 9)
    assert report["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 3)
    assert report["precision_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 3) / 6)
    assert report["recall_weighted"] == pytest.approx(4 / 6)
    assert report["f1_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 0.8) / 6)


def test_confusion_matrix_and_per_class_report(report):
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows true, columns predicted
    assert report["class_names"] == ["info", "nav", "buy"]
    assert report["per_class"]["nav"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1-score": 0.8, "support": 2}
    )
    assert report["per_class"]["buy"]["f1-score"] == 0.0


def test_log_loss_is_mean_negative_log_probability_of_the_true_class(report):
    expected = -np.mean(np.log([0.6, 0.5, 0.3, 0.7, 0.8, 0.3]))
    assert report["log_loss"] == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_log_loss_is_finite_when_the_true_class_has_probability_zero():
    proba = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # float32, as as_numpy gives
    loss = classification_report(np.array([1, 1]), proba)["log_loss"]
    # Clipped at float32's epsilon (~1.2e-7), so large but finite: one row at -log(eps), one at ~0.
    assert loss == pytest.approx(-np.log(np.finfo(np.float32).eps) / 2, rel=1e-4)


def test_multiclass_roc_auc_is_one_vs_rest_macro(report):
    per_class = [
        auc_by_pairs([0.6, 0.5, 0.3], [0.2, 0.1, 0.5]),  # 7.5 / 9
        auc_by_pairs([0.7, 0.8], [0.3, 0.4, 0.6, 0.2]),  # 1
        auc_by_pairs([0.3], [0.1] * 5),  # 1
    ]
    assert report["roc_auc"] == pytest.approx(np.mean(per_class))
    assert report["roc_auc"] == pytest.approx(17 / 18)


def test_binary_roc_auc_uses_the_positive_class_probability():
    proba1 = np.array([0.1, 0.4, 0.35, 0.8])
    proba = np.stack([1 - proba1, proba1], axis=1)
    result = classification_report(np.array([0, 0, 1, 1]), proba)
    assert result["roc_auc"] == pytest.approx(0.75)
    assert result["class_names"] == ["0", "1"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_roc_auc_with_a_class_absent_from_y_true_averages_over_the_present_classes():
    # 4 classes, class 3 never true: one-vs-rest over 0, 1, 2 on probabilities renormalised over them.
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array(
        [
            [0.5, 0.1, 0.2, 0.2],
            [0.3, 0.3, 0.1, 0.3],
            [0.2, 0.4, 0.2, 0.2],
            [0.4, 0.2, 0.2, 0.2],
            [0.1, 0.1, 0.6, 0.2],
            [0.2, 0.1, 0.3, 0.4],
        ]
    )
    result = classification_report(y, proba)
    present = proba[:, :3] / proba[:, :3].sum(axis=1, keepdims=True)
    expected = np.mean(
        [auc_by_pairs(present[y == c, c].tolist(), present[y != c, c].tolist()) for c in range(3)]
    )
    assert result["roc_auc"] == pytest.approx(expected)
    assert math.isfinite(result["log_loss"])
    assert result["confusion_matrix"][3] == [0, 0, 0, 0]


def test_roc_auc_with_two_of_three_classes_present_is_their_binary_auc():
    y = np.array([0, 0, 2, 2])
    proba = np.array([[0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.2, 0.3, 0.5], [0.5, 0.1, 0.4]])
    # Renormalised score of class 2: 0.25, 0.571 | 0.714, 0.444 -> pairs won 1 + 1 + 1 + 0.
    assert classification_report(y, proba)["roc_auc"] == pytest.approx(0.75)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_roc_auc_is_nan_with_a_single_class():
    assert math.isnan(classification_report(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))["roc_auc"])


def test_regression_report():
    result = regression_report(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]))
    # errors 0, 0, 0, 2; total sum of squares around the mean 2.5 is 5.
    # Predictions rank the rows exactly as the truth does: Spearman 1 despite the error.
    assert result == pytest.approx({"mse": 1.0, "rmse": 1.0, "mae": 0.5, "r2": 1 - 4 / 5, "spearman": 1.0})


def test_spearman_measures_rank_agreement_only():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert regression_report(y, np.array([5.0, 4.0, 3.0, 2.0, 1.0]))["spearman"] == pytest.approx(-1.0)
    # Ranks 1,3,2,4,5 against 1..5: 1 - 6 * (1 + 1) / (5 * 24) = 0.9.
    assert regression_report(y, np.array([10.0, 30.0, 20.0, 40.0, 50.0]))["spearman"] == pytest.approx(0.9)
    assert math.isnan(regression_report(y, np.full(5, 3.0))["spearman"])


def test_average_precision_binary_and_one_vs_rest_macro():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    # Positives ranked by score: 0.8 (pos), 0.7 (neg), 0.4 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2.
    assert classification_report(y, proba)["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    y3 = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y3] * 0.8 + 0.2 / 3
    assert classification_report(y3, perfect)["average_precision"] == pytest.approx(1.0)


def test_target_reports_map_regression_back_to_original_units():
    targets = [Target("intent", CLASSIFICATION), Target("ctr", REGRESSION)]
    mean, std = 10.0, 2.0
    y, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0])
    predictions = {"intent": PROBA, "ctr": (pred - mean) / std}
    labels = {"intent": Y_TRUE, "ctr": (y - mean) / std}
    reports = target_reports(
        predictions,
        labels,
        targets,
        target_scale={"ctr": (mean, std)},
        class_names={"intent": ["a", "b", "c"]},
    )
    assert reports["ctr"] == pytest.approx({"mse": 1.0, "rmse": 1.0, "mae": 0.5, "r2": 0.2, "spearman": 1.0})
    assert reports["intent"]["accuracy"] == pytest.approx(4 / 6)
    assert reports["intent"]["class_names"] == ["a", "b", "c"]
    # Without the scale the same arrays are read as standardised units: errors shrink by std.
    unscaled = target_reports(predictions, labels, targets)
    assert unscaled["ctr"] == pytest.approx(
        {"mse": 0.25, "rmse": 0.5, "mae": 0.25, "r2": 0.2, "spearman": 1.0}
    )
    assert unscaled["intent"]["class_names"] == ["0", "1", "2"]


def test_metric_names():
    targets = [Target("intent", CLASSIFICATION), Target("ctr", REGRESSION)]
    assert metric_names(targets, "val") == [
        "val/loss",
        "val/intent/loss",
        *(f"val/intent/{m}" for m in CLASSIFICATION_METRICS),
        "val/ctr/loss",
        "val/ctr/mse",
        "val/ctr/rmse",
        "val/ctr/mae",
        "val/ctr/r2",
        "val/ctr/spearman",
    ]
    assert "val/intent/f1_macro" in metric_names(targets, "val")
    assert metric_names([Target("ctr", REGRESSION)], "train")[:2] == ["train/loss", "train/ctr/loss"]


def test_flatten_keeps_the_scalars_under_slash_names():
    reports = {"ctr": {"mse": 1.0, "r2": 0.2}, "intent": classification_report(Y_TRUE, PROBA)}
    flat = flatten(reports, "test")
    assert flat["test/ctr/mse"] == 1.0
    assert flat["test/ctr/r2"] == 0.2
    assert flat["test/intent/accuracy"] == pytest.approx(4 / 6)
    # The matrix, the per-class dict and the names are not scalars.
    assert set(flat) == {"test/ctr/mse", "test/ctr/r2"} | {f"test/intent/{m}" for m in CLASSIFICATION_METRICS}


def test_as_numpy_gives_probabilities_and_flat_values():
    targets = [Target("intent", CLASSIFICATION), Target("ctr", REGRESSION)]
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    arrays = as_numpy({"intent": logits, "ctr": torch.tensor([[1.5], [-2.0]])}, targets)
    np.testing.assert_allclose(arrays["intent"], [[0.5, 0.5], [0.75, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(arrays["ctr"], [1.5, -2.0])
    # A bare tensor is the first target's output.
    np.testing.assert_allclose(as_numpy(logits, targets[:1])["intent"], arrays["intent"])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("classes, present", [(2, [0, 1]), (4, [0, 1, 2, 3]), (4, [0, 1, 3])])
def test_classification_report_equals_scikit_learns_own_scores(classes, present):
    """The scores derived from one confusion count and one pair of curves per class equal what
    scikit-learn's scoring functions give on the same rows (ties and an absent class included)."""
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    rng = np.random.default_rng(classes + len(present))
    y = rng.choice(present, size=500)
    logits = 1.5 * np.eye(classes)[y] + rng.normal(size=(500, classes))
    proba = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)  # ties
    proba /= proba.sum(axis=1, keepdims=True)
    pred, labels = proba.argmax(axis=1), list(range(classes))
    report = classification_report(y, proba)
    assert report["accuracy"] == skm.accuracy_score(y, pred)
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-15)
    for average in ("weighted", "macro"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=average, zero_division=0
        )
        assert [report[f"{m}_{average}"] for m in ("precision", "recall", "f1")] == pytest.approx(
            [p, r, f], abs=1e-15
        )
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    per_class = skm.classification_report(y, pred, labels=labels, output_dict=True, zero_division=0)
    for k in labels:
        assert report["per_class"][str(k)] == pytest.approx(per_class[str(k)], abs=1e-15)
    if classes == 2:
        auc, ap = skm.roc_auc_score(y, proba[:, 1]), skm.average_precision_score(y, proba[:, 1])
    elif len(present) == classes:
        auc = skm.roc_auc_score(y, proba, multi_class="ovr")
        ap = skm.average_precision_score(label_binarize(y, classes=labels), proba)
    else:
        renormalised = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
        auc = skm.roc_auc_score(np.searchsorted(present, y), renormalised, multi_class="ovr")
        ap = skm.average_precision_score(label_binarize(y, classes=labels)[:, present], proba[:, present])
    assert report["roc_auc"] == pytest.approx(auc, abs=1e-15)
    assert report["average_precision"] == pytest.approx(ap, abs=1e-15)

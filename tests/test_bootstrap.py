"""Bootstrap intervals: each resample's metric equals scikit-learn's on the same rows, and the percentiles are right."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

from seo_cli import bootstrap
from seo_cli.bootstrap import HEADLINE, interval, metric_samples, resample_indices
from seo_cli.metrics import classification_report


def softmax_proba(rng: np.random.Generator, y: np.ndarray, k: int, signal: float = 1.5) -> np.ndarray:
    logits = signal * np.eye(k)[y] + rng.normal(size=(len(y), k))
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def same(a: float, b: float) -> bool:
    """Equal up to float rounding; NaN equals NaN (an AUC undefined on both sides)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_resample_indices_are_seeded_and_shaped():
    idx = resample_indices(37, 25, seed=5)
    assert idx.shape == (25, 37)
    assert idx.dtype.kind == "i"
    assert idx.min() >= 0 and idx.max() <= 36
    np.testing.assert_array_equal(idx, resample_indices(37, 25, seed=5))
    assert not np.array_equal(idx, resample_indices(37, 25, seed=6))
    # Drawn with replacement: a resample of 37 rows almost surely repeats some.
    assert all(len(np.unique(row)) < 37 for row in idx)
    # Every row is drawn about equally often over many resamples.
    counts = np.bincount(resample_indices(10, 2000, seed=1).ravel(), minlength=10)
    assert counts.min() > 0.9 * 2000 and counts.max() < 1.1 * 2000


CLASSIFICATION_CASES = {
    # name: (rows, classes, class probabilities of the labels)
    "binary": (40, 2, [0.7, 0.3]),
    "three classes, one rare": (30, 3, [0.6, 0.33, 0.07]),
    "three classes, tiny": (6, 3, [0.5, 0.3, 0.2]),
}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("case", list(CLASSIFICATION_CASES))
def test_classification_samples_equal_sklearn_on_each_resample(case):
    n, k, priors = CLASSIFICATION_CASES[case]
    rng = np.random.default_rng(3)
    y = rng.choice(k, size=n, p=priors)
    y[:k] = np.arange(k)  # every class occurs in the evaluated rows
    proba = softmax_proba(rng, y, k)
    idx = resample_indices(n, 20, seed=11)
    # Two more: one class drawn only (AUC undefined, a class never predicted), and one class missing.
    only_first = np.zeros(n, dtype=idx.dtype)
    without_last = np.flatnonzero(y != k - 1)[np.arange(n) % (y != k - 1).sum()]
    idx = np.vstack([idx, only_first, without_last])
    samples = metric_samples("classification", y, proba, idx)
    assert set(samples) == set(HEADLINE["classification"]) == {"accuracy", "f1_macro", "roc_auc"}
    assert all(v.shape == (22,) for v in samples.values())
    pred = proba.argmax(axis=1)
    for r, rows in enumerate(idx):
        y_r, pred_r = y[rows], pred[rows]
        assert same(samples["accuracy"][r], accuracy_score(y_r, pred_r)), r
        expected_f1 = f1_score(y_r, pred_r, average="macro", labels=list(range(k)), zero_division=0)
        assert same(samples["f1_macro"][r], expected_f1), r
        expected_auc = classification_report(y_r, proba[rows])["roc_auc"]
        assert same(samples["roc_auc"][r], expected_auc), r
    assert np.isnan(samples["roc_auc"][-2])
    if k > 2:
        assert np.isfinite(samples["roc_auc"][-1])  # AUC over the two classes drawn


def test_regression_samples_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(4)
    y = rng.normal(10.0, 3.0, size=50)
    pred = y + rng.normal(0.5, 2.0, size=50)
    idx = resample_indices(50, 20, seed=2)
    samples = metric_samples("regression", y, pred, idx)
    assert set(samples) == set(HEADLINE["regression"]) == {"r2", "mae", "rmse"}
    for r, rows in enumerate(idx):
        assert samples["r2"][r] == pytest.approx(r2_score(y[rows], pred[rows]), rel=1e-10), r
        assert samples["mae"][r] == pytest.approx(mean_absolute_error(y[rows], pred[rows]), rel=1e-10), r
        rmse = math.sqrt(mean_squared_error(y[rows], pred[rows]))
        assert samples["rmse"][r] == pytest.approx(rmse, rel=1e-10), r


def test_interval_is_the_percentiles():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=500)
    assert interval(samples, 0.9) == pytest.approx(tuple(np.percentile(samples, [5, 95])))
    assert interval(samples) == pytest.approx(tuple(np.percentile(samples, [2.5, 97.5])))
    assert interval(np.arange(1001) / 1000, 0.95) == pytest.approx((0.025, 0.975))
    assert interval(np.arange(1001) / 1000, 0.5) == pytest.approx((0.25, 0.75))
    low, high = interval(samples)
    assert isinstance(low, float) and isinstance(high, float)


def test_interval_leaves_out_nan_resamples():
    values = np.arange(1001) / 1000
    with_nan = np.concatenate([[np.nan] * 300, values, [np.nan] * 50])
    assert interval(with_nan, 0.95) == pytest.approx((0.025, 0.975))
    assert all(math.isnan(v) for v in interval(np.full(10, np.nan)))


def test_accuracy_interval_has_the_binomial_width():
    """A model right on 80% of 1000 rows: the interval holds 0.8 and is about 2 x 1.96 x its standard error."""
    rng = np.random.default_rng(8)
    n = 1000
    y = rng.integers(0, 2, size=n)
    predicted = y.copy()
    wrong = rng.choice(n, size=200, replace=False)
    predicted[wrong] = 1 - y[wrong]
    proba = np.where(predicted[:, None] == np.arange(2), 0.8, 0.2)
    assert accuracy_score(y, proba.argmax(axis=1)) == 0.8
    samples = metric_samples("classification", y, proba, resample_indices(n, 500, seed=0))
    low, high = interval(samples["accuracy"], 0.95)
    assert low < 0.8 < high
    expected_width = 2 * 1.96 * math.sqrt(0.8 * 0.2 / n)
    assert high - low == pytest.approx(expected_width, rel=0.2)


def test_chunk_boundaries_do_not_change_the_samples(monkeypatch):
    """250 resamples cross the default CHUNK of 100 twice and end in a partial chunk."""
    rng = np.random.default_rng(6)
    n = 30
    y_class = rng.integers(0, 2, size=n)
    proba = softmax_proba(rng, y_class, 2)
    y_reg = rng.normal(size=n)
    pred_reg = y_reg + rng.normal(0, 0.5, size=n)
    idx = resample_indices(n, 250, seed=9)
    by_chunk = {}
    for chunk in (bootstrap.CHUNK, 7, 1000):  # the default, small uneven chunks, all in one go
        monkeypatch.setattr(bootstrap, "CHUNK", chunk)
        by_chunk[chunk] = metric_samples("classification", y_class, proba, idx) | metric_samples(
            "regression", y_reg, pred_reg, idx
        )
    in_one_go = by_chunk.pop(1000)
    assert set(in_one_go) == {"accuracy", "f1_macro", "roc_auc", "r2", "mae", "rmse"}
    for chunk, samples in by_chunk.items():
        for name, values in samples.items():
            assert values.shape == (250,), (chunk, name)
            np.testing.assert_array_equal(values, in_one_go[name], err_msg=f"CHUNK={chunk} {name}")
    # And the first resample computed on its own is the first sample, whatever the chunking.
    first = metric_samples("classification", y_class, proba, idx[:1])
    assert first["accuracy"][0] == in_one_go["accuracy"][0]
    assert first["roc_auc"][0] == in_one_go["roc_auc"][0]

"""Bootstrap intervals: each resample's metrics equal scikit-learn's on the same rows (the slow
per-resample computation, kept here as the reference), the resamples are the seeded draws whatever
the block size, and the percentiles are right."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

from seo_cli import bootstrap
from seo_cli.bootstrap import HEADLINE, Resamples, counts_of, interval, metric_samples, resample_indices
from seo_cli.metrics import classification_report


def softmax_proba(rng: np.random.Generator, y: np.ndarray, k: int, signal: float = 1.5) -> np.ndarray:
    logits = signal * np.eye(k)[y] + rng.normal(size=(len(y), k))
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)  # as the models' softmax gives them


def reference(task: str, y: np.ndarray, pred: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The headline metrics of each resample the slow way: its rows materialised, scikit-learn on them
    (ROC AUC as seo_cli.metrics reports it: one-vs-rest macro over the classes drawn)."""
    values: dict[str, list[float]] = {m: [] for m in HEADLINE[task]}
    for rows in indices:
        y_r, pred_r = y[rows], pred[rows]
        if task == "classification":
            k = pred.shape[1]
            labels = pred_r.argmax(axis=1)
            values["accuracy"].append(accuracy_score(y_r, labels))
            values["f1_macro"].append(
                f1_score(y_r, labels, average="macro", labels=list(range(k)), zero_division=0)
            )
            values["roc_auc"].append(classification_report(y_r, pred_r)["roc_auc"])
        else:
            values["r2"].append(r2_score(y_r, pred_r) if np.ptp(y_r) > 0 else math.nan)
            values["mae"].append(mean_absolute_error(y_r, pred_r))
            values["rmse"].append(math.sqrt(mean_squared_error(y_r, pred_r)))
    return {m: np.array(v) for m, v in values.items()}


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], rel: float = 1e-12) -> None:
    """Equal up to float rounding; NaN equals NaN (an AUC undefined on both sides)."""
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(
            got[name], expected[name], rtol=rel, atol=rel, equal_nan=True, err_msg=name
        )


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


@pytest.mark.parametrize("chunk, reuse", [(1, False), (3, False), (7, True), (25, False), (128, True)])
def test_resamples_drawn_in_blocks_are_the_single_draw(chunk, reuse):
    """numpy continues one stream across calls, so blocks of any size give resample_indices' rows
    (drawn into one array again and again, or each into its own)."""
    expected = counts_of(resample_indices(37, 25, seed=5), 37)
    blocks = [b.copy() for b in Resamples(37, 25, seed=5).counts(chunk, reuse)]
    assert [len(b) for b in blocks] == [min(chunk, 25 - s) for s in range(0, 25, chunk)]
    assert all(b.dtype == np.uint8 for b in blocks)
    np.testing.assert_array_equal(np.vstack(blocks), expected)
    assert (np.vstack(blocks).sum(axis=1) == 37).all()  # each resample draws as many rows as there are


CLASSIFICATION_CASES = {
    # name: (rows, classes, class probabilities of the labels, scores rounded to make ties)
    "binary": (40, 2, [0.7, 0.3], False),
    "three classes, one rare": (30, 3, [0.6, 0.33, 0.07], False),
    "three classes, tiny": (6, 3, [0.5, 0.3, 0.2], False),
    "four classes, tied scores": (300, 4, [0.35, 0.15, 0.25, 0.25], True),
    "binary, tied scores": (200, 2, [0.5, 0.5], True),
    "five classes, rare ones, ties": (80, 5, [0.85, 0.06, 0.04, 0.03, 0.02], True),
}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("case", list(CLASSIFICATION_CASES))
def test_classification_samples_equal_sklearn_on_each_resample(case):
    n, k, priors, ties = CLASSIFICATION_CASES[case]
    rng = np.random.default_rng(3)
    y = rng.choice(k, size=n, p=priors)
    y[:k] = np.arange(k)  # every class occurs in the evaluated rows
    proba = softmax_proba(rng, y, k)
    if ties:  # few distinct scores: many tie groups with positives and negatives in them
        proba = np.round(proba * 8) / 8 + np.float32(1e-3)
        proba /= proba.sum(axis=1, keepdims=True)
    idx = resample_indices(n, 30, seed=11)
    # Three more: one class drawn only (AUC undefined, a class never predicted, and counts over 15,
    # which the AUC sums in float32 instead of uint16), one class missing, and only the last two classes.
    only_first = np.zeros(n, dtype=idx.dtype)
    without_last = np.flatnonzero(y != k - 1)[np.arange(n) % (y != k - 1).sum()]
    last_two = np.flatnonzero(y >= k - 2)[np.arange(n) % (y >= k - 2).sum()]
    idx = np.vstack([idx, only_first, without_last, last_two])
    samples = metric_samples({"t": ("classification", y, proba)}, [counts_of(idx, n)])["t"]
    assert set(samples) == set(HEADLINE["classification"]) == {"accuracy", "f1_macro", "roc_auc"}
    assert all(v.shape == (len(idx),) for v in samples.values())
    assert_same(samples, reference("classification", y, proba, idx))
    assert np.isnan(samples["roc_auc"][-3])
    assert np.isfinite(samples["roc_auc"][-1])  # the AUC of the two classes drawn
    assert np.isfinite(samples["roc_auc"][-2]) == (k > 2)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_many_classes_take_the_sparse_columns_and_equal_sklearn():
    k = bootstrap.DENSE_CLASSES + 8
    rng = np.random.default_rng(12)
    y = np.concatenate([np.arange(k), rng.integers(0, k, size=260)])
    proba = softmax_proba(rng, y, k, signal=3.0)
    idx = resample_indices(len(y), 6, seed=1)
    samples = metric_samples({"t": ("classification", y, proba)}, [counts_of(idx, len(y))])["t"]
    assert_same(samples, reference("classification", y, proba, idx))


def test_regression_samples_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(4)
    y = rng.normal(10.0, 3.0, size=50)
    pred = (y + rng.normal(0.5, 2.0, size=50)).astype(np.float32)
    idx = np.vstack([resample_indices(50, 20, seed=2), np.zeros(50, dtype=np.int64)])  # the last: one row
    samples = metric_samples({"t": ("regression", y, pred)}, [counts_of(idx, 50)])["t"]
    assert set(samples) == set(HEADLINE["regression"]) == {"r2", "mae", "rmse"}
    assert_same(samples, reference("regression", y, pred, idx), rel=1e-10)
    assert np.isnan(samples["r2"][-1])  # every drawn target equal: R^2 undefined


def test_several_targets_share_the_resamples_and_blocks_do_not_change_them():
    """Block sizes and worker processes change how the work is cut, never a sample; two models'
    targets in one call each equal the model scored alone."""
    rng = np.random.default_rng(6)
    n = 60
    y_class = rng.integers(0, 3, size=n)
    y_reg = rng.normal(size=n)
    predictions = {
        "a": ("classification", y_class, softmax_proba(rng, y_class, 3)),
        "b": ("classification", y_class, softmax_proba(rng, y_class, 3, signal=0.5)),
        "c": ("regression", y_reg, y_reg + rng.normal(0, 0.5, size=n)),
    }
    expected = {name: reference(*p, resample_indices(n, 45, seed=9)) for name, p in predictions.items()}
    for chunk, workers in ((bootstrap.CHUNK, 1), (7, 1), (7, 2), (45, 2)):
        got = metric_samples(predictions, Resamples(n, 45, seed=9).counts(chunk, reuse=True), workers=workers)
        for name in predictions:
            assert_same(got[name], expected[name], rel=1e-10)
    alone = metric_samples({"b": predictions["b"]}, Resamples(n, 45, seed=9).counts())
    np.testing.assert_array_equal(alone["b"]["roc_auc"], got["b"]["roc_auc"])


def test_auc_sums_across_tiles_and_both_number_types(monkeypatch):
    """Rows over several tiles of the rank sums (small tiles here), and counts in both of its number
    types (uint16 when no count is over 15, float32 otherwise): the pairs equal a brute-force count."""
    monkeypatch.setattr(bootstrap, "BLOCK", 4)
    monkeypatch.setattr(bootstrap, "TILE_BLOCKS", 3)  # 12 rows a tile
    rng = np.random.default_rng(1)
    n = 100
    score = np.round(rng.random(n), 1).astype(np.float32)  # ties
    positive = rng.random(n) < 0.4
    counts = np.vstack([rng.integers(0, 16, size=(5, n)), rng.integers(0, 200, size=(2, n))]).astype(np.uint8)
    plan = bootstrap._rank_plan(score, positive, np.arange(n), n)
    assert plan.positive.shape[0] == 9  # 100 rows in tiles of 12
    row_major = np.vstack([counts.T, np.zeros((1, len(counts)), dtype=np.uint8)])
    above = (score[:, None] > score[None, :]) + 0.5 * (score[:, None] == score[None, :])
    for r, w in enumerate(counts.astype(np.float64)):
        expected = (w * positive) @ above @ (w * ~positive)
        for small in (True, False) if r < 5 else (False,):
            got = bootstrap._pairs_below(row_major[:, r : r + 1], plan, small)
            assert got[0] == expected, (r, small)


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
    samples = metric_samples({"t": ("classification", y, proba)}, Resamples(n, 500, seed=0).counts())["t"]
    low, high = interval(samples["accuracy"], 0.95)
    assert low < 0.8 < high
    expected_width = 2 * 1.96 * math.sqrt(0.8 * 0.2 / n)
    assert high - low == pytest.approx(expected_width, rel=0.2)


def test_a_worker_that_dies_is_one_sentence():
    """A bootstrap worker process killed (for memory, say) stops the run with a UserError, not a hang."""
    import os

    from seo_cli.errors import UserError

    blocks = [np.zeros((2, 5), dtype=np.uint8)] * 3
    with pytest.raises(UserError, match="a bootstrap worker process died"):
        bootstrap._map_blocks(lambda block: os._exit(9), blocks, workers=2)
    assert bootstrap._map_blocks(lambda block: int(block.sum()), blocks, workers=2) == [0, 0, 0]

"""The evaluation report: plots as real PNGs of the set size, and report.md with the numbers it was given."""

import re

import matplotlib.image
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.metrics import classification_report, ranking_curves, regression_report
from seo_cli.report import CURVE_POINTS, SCATTER_POINTS, file_stems, scatter_rows, thin_curve, write_report

TARGETS = [
    Target("page/type", CLASSIFICATION),
    Target("is_local", CLASSIFICATION),
    Target("ctr", REGRESSION),
]
PAGE_CLASSES = ["how to", "product", "news"]
HISTORY = [
    {"epoch": float(e), "train/loss": 1.0 / e, "val/loss": 1.1 / e, "val/page/type/accuracy": 0.6 + 0.1 * e}
    | {"val/ctr/r2": 0.2 * e}
    for e in (1, 2, 3)
]
# Figure sizes at 110 dpi: 6.4 x 4.8 in for target plots, 11 x 4.2 in for the learning curves.
PLOT_PX = (528, 704)
CURVES_PX = (462, 1210)
RELIABILITY_PX = (660, 704)  # 6.4 x 6.0 in: the diagram over its rows per bin


def noisy_proba(rng: np.random.Generator, y: np.ndarray, k: int) -> np.ndarray:
    logits = 2.0 * np.eye(k)[y] + rng.normal(size=(len(y), k))
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def synthetic_eval(resamples: int = 200, split: str = "test", prefix: str = "test") -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    n = 200
    page, local = rng.integers(0, 3, n), rng.integers(0, 2, n)
    ctr = rng.uniform(0, 0.3, n)
    predictions = {
        "page/type": {"y_true": page, "y_pred": noisy_proba(rng, page, 3)},
        "is_local": {"y_true": local, "y_pred": noisy_proba(rng, local, 2)},
        "ctr": {"y_true": ctr, "y_pred": ctr + rng.normal(0, 0.02, n)},
    }
    reports = {
        "page/type": classification_report(page, predictions["page/type"]["y_pred"], PAGE_CLASSES),
        "is_local": classification_report(local, predictions["is_local"]["y_pred"], ["no", "yes"]),
        "ctr": regression_report(ctr, predictions["ctr"]["y_pred"]),
    }
    # Pinned values, so the assertions below know the exact text to find.
    reports["page/type"]["accuracy"] = 0.81234
    reports["ctr"]["r2"] = 0.63217
    metrics = {
        f"{prefix}/{t}/{m}": v for t, r in reports.items() for m, v in r.items() if isinstance(v, float)
    }
    result = {
        "checkpoint": "outputs/train/run1/checkpoints/best.pt",
        "epoch": 3,
        "split": split,
        "rows": n,
        "metrics": metrics | {f"{prefix}/loss": 0.4567, f"{prefix}/ctr/loss": 0.01234},
        "intervals": {f"{prefix}/page/type/accuracy": [0.79, 0.83], f"{prefix}/ctr/r2": [0.61234, 0.65432]},
        "bootstrap": {"resamples": resamples, "confidence": 0.95, "seed": 7},
        "targets": reports,
    }
    return result, predictions


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(report.md text, plots dir, result, predictions) of one report with a 3-epoch history."""
    result, predictions = synthetic_eval()
    out = tmp_path_factory.mktemp("eval")
    path = write_report(out, result, predictions, TARGETS, HISTORY)
    assert path == out / "report.md"
    return path.read_text(), out / "plots", result, predictions


EXPECTED_PLOTS = {
    "page_type_confusion.png": PLOT_PX,
    "page_type_roc.png": PLOT_PX,
    "page_type_pr.png": PLOT_PX,
    "is_local_confusion.png": PLOT_PX,
    "is_local_roc.png": PLOT_PX,
    "is_local_pr.png": PLOT_PX,
    "page_type_reliability.png": RELIABILITY_PX,
    "is_local_reliability.png": RELIABILITY_PX,
    "ctr_scatter.png": PLOT_PX,
    "ctr_residuals.png": PLOT_PX,
    "learning_curves.png": CURVES_PX,
}


def test_every_plot_is_a_png_of_the_set_size(written):
    _, plots, _, _ = written
    assert {p.name for p in plots.iterdir()} == set(EXPECTED_PLOTS)
    for name, (height, width) in EXPECTED_PLOTS.items():
        assert (plots / name).read_bytes().startswith(b"\x89PNG"), name
        assert matplotlib.image.imread(plots / name).shape[:2] == (height, width), name


def test_report_links_every_plot_relative_to_itself(written):
    md, plots, _, _ = written
    linked = re.findall(r"!\[[^\]]*\]\(plots/([^)]+)\)", md)
    assert sorted(linked) == sorted(p.name for p in plots.iterdir())
    assert "## Learning curves" in md


def test_report_header_and_sections(written):
    md, _, _, _ = written
    assert md.startswith("# Evaluation: best.pt\n")
    assert "Checkpoint `outputs/train/run1/checkpoints/best.pt`, epoch 3, split `test`, 200 rows;" in md
    assert "95% bootstrap intervals from 200 resamples (seed 7)" in md
    assert "Loss: 0.4567" in md
    for section in ("## page/type (classification)", "## is_local (classification)", "## ctr (regression)"):
        assert section in md


def test_report_metric_values_and_intervals(written):
    md, _, _, _ = written
    assert "| accuracy | 0.8123 | [0.79, 0.83] |" in md
    assert "| r2 | 0.6322 | [0.6123, 0.6543] |" in md
    assert "| loss | 0.01234 |  |" in md  # the target loss, taken from the flat metrics
    # is_local has no intervals, so its table has no interval column.
    is_local = md.split("## is_local")[1].split("## ctr")[0]
    assert "| metric | value |\n" in is_local


def test_report_per_class_and_confusion_tables(written):
    md, _, result, _ = written
    report = result["targets"]["page/type"]
    assert "| true / predicted | how to | product | news |" in md
    for name, row in zip(PAGE_CLASSES, report["confusion_matrix"], strict=True):
        assert f"| {name} | {' | '.join(map(str, row))} |" in md
    m = report["per_class"]["how to"]
    assert (
        f"| how to | {m['precision']:.4g} | {m['recall']:.4g} | {m['f1-score']:.4g} | {int(m['support'])} |"
        in md
    )


def test_no_learning_curves_without_history(tmp_path):
    result, predictions = synthetic_eval(resamples=0)
    md = write_report(tmp_path, result, predictions, TARGETS, None).read_text()
    assert not (tmp_path / "plots" / "learning_curves.png").exists()
    assert "Learning curves" not in md
    assert "bootstrap intervals off" in md


@pytest.mark.parametrize("prefix", ["file:/data/new.csv", "file"])
def test_intervals_found_for_a_file_split(tmp_path, prefix):
    result, predictions = synthetic_eval(split="file:/data/new.csv", prefix=prefix)
    md = write_report(tmp_path, result, predictions, TARGETS).read_text()
    assert "split `file:/data/new.csv`" in md
    assert "Loss: 0.4567" in md
    assert "| accuracy | 0.8123 | [0.79, 0.83] |" in md
    assert "| loss | 0.01234 |  |" in md


def test_binary_roc_and_pr_match_sklearn():
    _, predictions = synthetic_eval()
    y, proba = predictions["is_local"]["y_true"], predictions["is_local"]["y_pred"]
    [(name, _, _, auc)], [(_, _, _, ap)] = ranking_curves(y, proba, ["no", "yes"])
    assert name == "yes"
    assert auc == pytest.approx(roc_auc_score(y, proba[:, 1]), rel=1e-14)
    assert ap == pytest.approx(average_precision_score(y, proba[:, 1]), rel=1e-14)


def test_multiclass_curves_are_one_vs_rest_and_skip_absent_classes():
    _, predictions = synthetic_eval()
    y, proba = predictions["page/type"]["y_true"], predictions["page/type"]["y_pred"]
    roc, pr = ranking_curves(y, proba, PAGE_CLASSES)
    assert [c[0] for c in roc] == [c[0] for c in pr] == PAGE_CLASSES
    for k, ((_, _, _, auc), (_, _, _, ap)) in enumerate(zip(roc, pr, strict=True)):
        assert auc == pytest.approx(roc_auc_score(y == k, proba[:, k]), rel=1e-14)
        assert ap == pytest.approx(average_precision_score(y == k, proba[:, k]), rel=1e-14)
    present = y != 2
    roc, pr = ranking_curves(y[present], proba[present], PAGE_CLASSES)
    assert [c[0] for c in roc] == [c[0] for c in pr] == ["how to", "product"]


def test_plotted_curves_are_thinned_to_their_first_and_last_points_and_evenly_between():
    """A curve of 1,000,000 rows is plotted with at most CURVE_POINTS points, its ends kept."""
    rng = np.random.default_rng(2)
    n = 200_000
    y = rng.integers(0, 2, n)
    score = y * 0.3 + rng.random(n)
    [(_, fpr, tpr, _)], [(_, recall, precision, _)] = ranking_curves(
        y, np.stack([1 - score, score], 1), ["n", "p"]
    )
    for x, v in ((fpr, tpr), (recall, precision)):
        assert len(x) > 10 * CURVE_POINTS  # the full curve, as scikit-learn returns it
        thin_x, thin_v = thin_curve(x, v)
        assert len(thin_x) == len(thin_v) == CURVE_POINTS
        assert (thin_x[0], thin_v[0], thin_x[-1], thin_v[-1]) == (x[0], v[0], x[-1], v[-1])
        assert np.isin(thin_x + 1j * thin_v, x + 1j * v).all()  # points of the curve, in its order
        assert np.all(np.diff(thin_x) >= 0) if x[-1] > x[0] else np.all(np.diff(thin_x) <= 0)
    short = (np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.8, 1.0]))
    assert thin_curve(*short) == short  # few points: all kept


def test_scatter_rows_are_all_or_a_seeded_sample():
    np.testing.assert_array_equal(scatter_rows(500), np.arange(500))
    rows = scatter_rows(1_000_000)
    assert len(rows) == SCATTER_POINTS == len(np.unique(rows))
    assert np.all(np.diff(rows) > 0) and rows[-1] < 1_000_000
    np.testing.assert_array_equal(rows, scatter_rows(1_000_000))  # the same rows each time


def test_file_stems_are_safe_and_unique():
    assert file_stems(["page/type", "how to?", "a.b-c_d", "page_type"]) == {
        "page/type": "page_type",
        "how to?": "how_to_",
        "a.b-c_d": "a.b-c_d",
        "page_type": "page_type_3",
    }

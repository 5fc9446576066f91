"""An evaluation report: PNG plots per target and a ``report.md`` that embeds them, readable on GitHub.

Plots are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas and never through pyplot,
so no figure, backend or rc setting outlives a call (multirun jobs and tests share one process).
"""

import logging
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, Target
from seo_cli.files import atomic_path, write_text
from seo_cli.metrics import Curve, Curves, ranking_curves

log = logging.getLogger(__name__)

DPI = 110
PLOT_SIZE = (6.4, 4.8)  # inches; 704 x 528 px at DPI
CURVES_SIZE = (11.0, 4.2)
CURVE_POINTS = 2_000  # per plotted ROC or precision-recall curve: about 3 per pixel of its width
SCATTER_POINTS = 20_000  # per scatter plot: beyond it the marks only pile up and cost time


def write_report(
    out_dir: Path,
    result: dict,
    predictions: dict[str, dict[str, np.ndarray]],
    targets: list[Target],
    history: list[dict[str, float]] | None = None,
    curves: dict[str, Curves] | None = None,
) -> Path:
    """Write PNG plots under out_dir/"plots" and out_dir/"report.md" (which embeds them with relative links); returns the report path.

    Args:
        curves: the classification targets' ROC and precision-recall curves when the caller has them
            (``seo_cli.metrics.ranking_curves``; computed here otherwise).

    Each file is written atomically. Raises:
        UserError: a file cannot be written (a full disk, a read-only folder), naming it.
    """
    plots = Path(out_dir) / "plots"
    stems = file_stems([t.name for t in targets])
    prefix = _split_prefix(result, targets)
    lines = _header(result, prefix)
    for t in targets:
        report, pred, stem = result["targets"][t.name], predictions[t.name], stems[t.name]
        lines += [f"## {t.name} ({t.type})", "", *_scalar_table(t.name, report, result, prefix)]
        if t.type == CLASSIFICATION:
            names = report["class_names"]
            lines += _per_class_table(report) + _confusion_table(report)
            plot_confusion(plots / f"{stem}_confusion.png", report["confusion_matrix"], names, t.name)
            if curves and t.name in curves:
                roc, pr = curves[t.name]
            else:
                roc, pr = ranking_curves(pred["y_true"], pred["y_pred"], names)
            plot_curves(plots / f"{stem}_roc.png", roc, f"{t.name}: ROC", "AUC", roc=True)
            plot_curves(plots / f"{stem}_pr.png", pr, f"{t.name}: precision-recall", "AP", roc=False)
            calibrated = (result.get("calibration") or {}).get(t.name)
            if calibrated:
                lines += _calibration_table(calibrated)
            plot_reliability(plots / f"{stem}_reliability.png", report["reliability"], t.name, len(names), calibrated)
            images = [("confusion matrix", "confusion"), ("ROC curves", "roc"), ("precision-recall", "pr")]
            images.append(("reliability diagram", "reliability"))
        elif t.type == MULTILABEL:
            lines += _per_class_table(report, "per_label", "label")
            plot_curves(plots / f"{stem}_pr.png", label_pr_curves(pred["y_true"], pred["y_pred"], report["label_names"]),
                        f"{t.name}: precision-recall per label", "AP", roc=False)
            images = [("precision-recall per label", "pr")]
        else:
            plot_scatter(plots / f"{stem}_scatter.png", pred["y_true"], pred["y_pred"], t.name)
            plot_residuals(plots / f"{stem}_residuals.png", pred["y_true"], pred["y_pred"], t.name)
            images = [("predicted vs actual", "scatter"), ("residuals", "residuals")]
        lines += [f"![{t.name} {alt}](plots/{stem}_{kind}.png)" for alt, kind in images] + [""]
    if history:
        plot_learning_curves(plots / "learning_curves.png", history)
        lines += ["## Learning curves", "", "![learning curves](plots/learning_curves.png)", ""]
    path = write_text(Path(out_dir) / "report.md", "\n".join(lines))
    log.info("Wrote %s", path)
    return path


def file_stems(names: list[str]) -> dict[str, str]:
    """A file-name-safe stem per target name ([A-Za-z0-9_.-] kept, the rest ``_``), unique even on collision."""
    stems: dict[str, str] = {}
    for i, name in enumerate(names):
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        # "page/type" and "page_type" would otherwise overwrite each other's plots.
        stems[name] = f"{stem}_{i}" if stem in stems.values() else stem
    return stems


def plot_confusion(path: Path, matrix: list[list[int]], class_names: list[str], target: str) -> None:
    cm, k = np.asarray(matrix), len(class_names)
    fig = _figure(PLOT_SIZE if k <= 8 else (0.55 * k + 2.0, 0.55 * k + 1.6))
    ax = fig.add_subplot()
    fig.colorbar(ax.imshow(cm, cmap="Blues"), ax=ax)
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    for i, j in np.ndindex(cm.shape):
        dark = cm[i, j] > cm.max() / 2
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if dark else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{target}: confusion matrix")
    save_figure(fig, path)


def plot_curves(path: Path, curves: list[Curve], title: str, area: str, roc: bool) -> None:
    """ROC (with the chance diagonal) or precision-recall curves, the area of each in the legend."""
    ax = _figure(PLOT_SIZE).add_subplot()
    for name, x, y, value in curves:
        ax.plot(*thin_curve(x, y), label=f"{name} ({area} {value:.3f})")
    if roc:
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    if curves:
        ax.legend(loc="lower right" if roc else "lower left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no class has the rows this curve needs", ha="center", transform=ax.transAxes)
    axes = ("false positive rate", "true positive rate") if roc else ("recall", "precision")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=axes[0], ylabel=axes[1], title=title)
    save_figure(ax.figure, path)


def plot_reliability(path: Path, reliability: dict, target: str, classes: int, calibrated: dict | None = None) -> None:
    """Observed frequency against predicted probability per bin (``seo_cli.metrics.reliability_bins``), the
    diagonal being perfect calibration, and the rows per bin below; with ``calibrated`` (seo-eval
    calibrate=true's result of the target) the curve after temperature scaling too."""
    fig = _figure((PLOT_SIZE[0], PLOT_SIZE[1] * 1.25))
    curve, counts = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    curve.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    shown = [("as trained" if calibrated else "model", reliability)]
    if calibrated:
        shown.append((f"temperature {calibrated['temperature']:.3g}", calibrated["after"]["reliability"]))
    width = 1.0 / reliability["bins"]
    for i, (label, bins) in enumerate(shown):
        curve.plot(bins["confidence"], bins["accuracy"], "o-", ms=4, label=label)
        counts.bar(np.asarray(bins["confidence"]) + (i - 0.5 * (len(shown) - 1)) * width / 3, bins["rows"], width=width / 3)
    curve.legend(loc="upper left", fontsize="small")
    x = "P(class 1)" if classes == 2 else "confidence (largest probability)"
    y = "share of class 1" if classes == 2 else "share of rows whose top class is right"
    curve.set(xlim=(0, 1), ylim=(0, 1.02), ylabel=y, title=f"{target}: reliability diagram ({reliability['bins']} bins)")
    counts.set(xlabel=x, ylabel="rows")
    save_figure(fig, path)


def label_pr_curves(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> list[Curve]:
    """A multilabel target's precision-recall curve of each label with a positive row (recall, precision, AP)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves = []
    for k, label in enumerate(labels):
        if y_true[:, k].any():
            precision, recall, _ = precision_recall_curve(y_true[:, k], proba[:, k])
            curves.append((label, recall, precision, float(average_precision_score(y_true[:, k], proba[:, k]))))
    return curves


def plot_scatter(path: Path, y_true: np.ndarray, y_pred: np.ndarray, target: str) -> None:
    """Predicted against actual values: all rows up to ``SCATTER_POINTS``, else that many drawn at
    random (seeded, so the same rows each time), said in the title; the diagonal spans all rows."""
    ax = _figure(PLOT_SIZE).add_subplot()
    shown = scatter_rows(len(y_true))
    # plot() with markers draws 1e6 points in about a second; scatter() takes several.
    ax.plot(y_true[shown], y_pred[shown], ".", ms=3, alpha=0.3)
    lo, hi = min(np.nanmin(y_true), np.nanmin(y_pred)), max(np.nanmax(y_true), np.nanmax(y_pred))
    ax.plot([lo, hi], [lo, hi], "--", color="grey", label="ideal (y = x)")
    ax.legend(loc="upper left")
    title = f"{target}: predicted vs actual"
    if len(shown) < len(y_true):
        title += f"\n{len(shown):,} of {len(y_true):,} rows, drawn at random"
    ax.set(xlabel=f"actual {target}", ylabel=f"predicted {target}", title=title)
    save_figure(ax.figure, path)


def thin_curve(x: np.ndarray, y: np.ndarray, points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` of a curve's points, evenly spaced along it, its first and last kept: a ROC or
    precision-recall curve of 1,000,000 rows has up to as many points, far more than a plot has pixels."""
    if len(x) <= points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, points).round().astype(np.intp))
    return x[keep], y[keep]


def scatter_rows(rows: int, points: int = SCATTER_POINTS) -> np.ndarray:
    """The rows a scatter plot shows: all, or ``points`` of them drawn with a fixed seed, in order."""
    if rows <= points:
        return np.arange(rows)
    return np.sort(np.random.default_rng(0).choice(rows, size=points, replace=False))


def plot_residuals(path: Path, y_true: np.ndarray, y_pred: np.ndarray, target: str) -> None:
    ax = _figure(PLOT_SIZE).add_subplot()
    ax.hist(y_pred - y_true, bins=50)
    ax.axvline(0, color="black", ls="--", lw=1)
    ax.set(xlabel=f"predicted - actual {target}", ylabel="rows", title=f"{target}: residuals")
    save_figure(ax.figure, path)


def plot_learning_curves(path: Path, history: list[dict[str, float]]) -> None:
    """Train and val loss per epoch on the left; each target's val accuracy or r2 on the right."""
    fig = _figure(CURVES_SIZE)
    losses, scores = fig.subplots(1, 2)
    metric_keys = dict.fromkeys(
        k for row in history for k in row if k.startswith("val/") and k.endswith(("/accuracy", "/r2", "/f1_micro"))
    )
    for ax, keys in ((losses, ["train/loss", "val/loss"]), (scores, list(metric_keys))):
        for key in keys:
            points = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(history) if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", ms=3, label=key)
        if ax.lines:
            ax.legend(fontsize="small")
        ax.set(xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses.set(ylabel="loss", title="loss")
    scores.set(ylabel="accuracy / r2", title="validation metrics")
    save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically (see ``seo_cli.files``).

    Raises:
        UserError: the file cannot be written.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)  # the format by name: the temp file's suffix is .tmp


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _split_prefix(result: dict, targets: list[Target]) -> str:
    """The ``<split>`` of the flat metric keys; for a file split it need not equal ``result["split"]``."""
    keys = result.get("metrics", {})
    t = targets[0]
    metric = next((k for k, v in result["targets"][t.name].items() if isinstance(v, float)), "loss")
    suffix = f"/{t.name}/{metric}"
    candidates = [result["split"]] + [k.removesuffix(suffix) for k in keys if k.endswith(suffix)]
    return next((p for p in candidates if p + suffix in keys), result["split"])


def _header(result: dict, prefix: str) -> list[str]:
    boot = result.get("bootstrap") or {}
    if boot.get("resamples"):
        intervals = f"{boot['confidence']:.0%} bootstrap intervals from {boot['resamples']} resamples (seed {boot['seed']})"
    else:
        intervals = "bootstrap intervals off"
    epoch = "unknown" if result.get("epoch") is None else result["epoch"]
    lines = [
        f"# Evaluation: {Path(result['checkpoint']).name}",
        "",
        f"Checkpoint `{result['checkpoint']}`, epoch {epoch}, split `{result['split']}`, "
        f"{result['rows']} rows; {intervals}.",
        "",
    ]
    loss = f"{prefix}/loss"
    if loss in result.get("metrics", {}):
        lines += [f"Loss: {_num(result['metrics'][loss])} {_interval(result, loss)}".rstrip(), ""]
    return lines


def _scalar_table(name: str, report: dict, result: dict, prefix: str) -> list[str]:
    values = {k: v for k, v in report.items() if isinstance(v, float)}
    # The target's loss lives only in the flat metrics, not in its report.
    start = f"{prefix}/{name}/"
    values |= {k.removeprefix(start): v for k, v in result.get("metrics", {}).items() if k.startswith(start)}
    values = {k: v for k, v in values.items() if "/" not in k}  # not target "page/type"'s keys under "page"
    rows = [[k, _num(v), _interval(result, start + k)] for k, v in values.items()]
    if any(r[2] for r in rows):
        return _table(["metric", "value", "interval"], rows)
    return _table(["metric", "value"], [r[:2] for r in rows])


def _per_class_table(report: dict, key: str = "per_class", kind: str = "class") -> list[str]:
    rows = [
        [c, _num(m["precision"]), _num(m["recall"]), _num(m["f1-score"]), str(int(m["support"]))]
        for c, m in report[key].items()
    ]
    return [f"Per {kind}:", "", *_table([kind, "precision", "recall", "F1", "support"], rows)]


def _calibration_table(calibrated: dict) -> list[str]:
    rows = [[key, _num(calibrated["before"][key]), _num(calibrated["after"][key])] for key in ("ece", "log_loss", "brier")]
    head = (
        f"Temperature scaling: T = {calibrated['temperature']:.4g}, fitted on {calibrated['val_rows']} val rows "
        "(written to calibrated.pt); on these rows:"
    )
    return [head, "", *_table(["metric", "before", "after"], rows)]


def _confusion_table(report: dict) -> list[str]:
    names, cm = report["class_names"], report["confusion_matrix"]
    rows = [[n, *map(str, row)] for n, row in zip(names, cm, strict=True)]
    return [
        "Confusion matrix (rows true, columns predicted):",
        "",
        *_table(["true / predicted", *names], rows),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    # A "|" inside a cell would end it early.
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(header) - 1)
    return [line(header), "|" + "|".join(align) + "|", *map(line, rows), ""]


def _interval(result: dict, key: str) -> str:
    bounds = (result.get("intervals") or {}).get(key)
    return f"[{_num(bounds[0])}, {_num(bounds[1])}]" if bounds else ""


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"

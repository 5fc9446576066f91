"""The summary of a k-fold cross-validation (``seo-train cv.folds=K``): each fold's row, and the mean and
standard deviation of every metric over the folds.

``seo_cli.train.cross_validate`` trains the folds; this module only turns their ``summary.json`` dicts
into ``cv_summary.csv``, ``cv_summary.json`` and the run's own summary, whose objective is the mean.
"""

import json
import logging
from pathlib import Path

import pandas as pd

from seo_cli.console import metrics_table, print_table
from seo_cli.files import atomic_path, write_text

log = logging.getLogger(__name__)

CV_SUMMARY = "cv_summary"  # cv_summary.csv and cv_summary.json in the run directory: what marks a cv run
FOLD_COLUMNS = [
    "fold",
    "status",
    "objective",
    "best_epoch",
    "epochs_trained",
    "wall_time_s",
    "samples_per_second",
]


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold_{fold}"


def fold_table(summaries: list[dict]) -> pd.DataFrame:
    """One row per fold, in fold order: its status, objective value, epochs and every final metric."""
    rows = [
        {
            "fold": k,
            "status": s.get("status"),
            "objective": s.get("objective_value"),
            "best_epoch": s.get("best_epoch"),
            "epochs_trained": s.get("epochs_trained"),
            "wall_time_s": s.get("wall_time_s"),
            "samples_per_second": s.get("samples_per_second"),
            **s.get("metrics", {}),
        }
        for k, s in enumerate(summaries)
    ]
    return pd.DataFrame(rows)


def fold_statistics(folds: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """The mean and the standard deviation over the folds of every number in ``fold_table``'s frame but
    the fold index. The standard deviation is numpy's (ddof=0), as ``cross_val_score(...).std()`` reports."""
    numbers = folds.drop(columns=["fold", "status"]).apply(pd.to_numeric, errors="coerce")
    mean = numbers.mean().to_dict()
    std = numbers.std(ddof=0).to_dict()
    return _plain(mean), _plain(std)


def summarize_folds(objective: str, summaries: list[dict], run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The fold table (with its ``mean`` and ``std`` rows) and the run's summary.json: its objective value
    and every metric are the folds' means (``metrics_std`` their standard deviations)."""
    folds = fold_table(summaries)
    mean, std = fold_statistics(folds)
    metrics = [k for k in mean if k not in FOLD_COLUMNS]
    table = pd.concat(
        [folds, pd.DataFrame([{"fold": "mean", **mean}, {"fold": "std", **std}])], ignore_index=True
    )
    first = summaries[0]
    statuses = {s.get("status") for s in summaries}
    summary = {
        "status": "ok" if statuses == {"ok"} else ",".join(sorted(map(str, statuses))),
        "objective": objective,
        "objective_value": mean["objective"],
        "objective_std": std["objective"],
        "cv_folds": len(summaries),
        "folds": [str(fold_dir(run_dir, k)) for k in range(len(summaries))],
        "best_epoch": None,  # one per fold: cv_summary.csv
        "epochs_trained": sum(s.get("epochs_trained") or 0 for s in summaries),
        "metrics": {k: mean[k] for k in metrics},
        "metrics_std": {k: std[k] for k in metrics},
        "num_parameters": first.get("num_parameters"),
        "samples_per_second": mean.get("samples_per_second"),
        "peak_memory_mb": max((s.get("peak_memory_mb") or 0.0) for s in summaries),
        "device": first.get("device"),
    }
    return table, summary


def write_cv_summary(run_dir: Path, table: pd.DataFrame, summary: dict) -> None:
    """cv_summary.csv (a row per fold, then mean and std) and cv_summary.json, and the table of means."""
    with atomic_path(run_dir / f"{CV_SUMMARY}.csv") as tmp:
        table.to_csv(tmp, index=False)
    folds = table[~table["fold"].isin(["mean", "std"])]
    document = {
        "objective": summary["objective"],
        "folds": json.loads(folds.to_json(orient="records")),
        "mean": {"objective": summary["objective_value"], **summary["metrics"]},
        "std": {"objective": summary["objective_std"], **summary["metrics_std"]},
    }
    write_text(run_dir / f"{CV_SUMMARY}.json", json.dumps(document, indent=2) + "\n")
    means = {"objective": summary["objective_value"], **summary["metrics"]}
    stds = {"objective": summary["objective_std"], **summary["metrics_std"]}
    title = f"{summary['cv_folds']}-fold cross-validation, {summary['objective']}"
    print_table(metrics_table(title, {"mean": means, "std": stds}))
    log.info(
        "Cross-validation summary: %s and %s", run_dir / f"{CV_SUMMARY}.csv", run_dir / f"{CV_SUMMARY}.json"
    )


def _plain(values: dict) -> dict[str, float | None]:
    """NaN (a column no fold has a number in) as None, so the JSON files stay valid JSON."""
    return {k: (None if pd.isna(v) else float(v)) for k, v in values.items()}

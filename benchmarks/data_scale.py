"""Reading and preprocessing a large table file: wall time and peak memory of seo-train's data step.

    python benchmarks/data_scale.py                    # 1,000,000 rows, 3 text columns (the README figure)
    python benchmarks/data_scale.py --rows 100000      # a quicker look

Writes a CSV of ``--rows`` built-in seo_pages rows (title, meta description and body text, nine
numeric signals, a categorical column, four targets) to a temporary directory, then runs
``prepare_data`` on it in a fresh process, as ``seo-train data=csv ...`` does: read the file, check
every column, split, fit the preprocessing on the training split (BPE tokenizer included) and
tensorize all three splits. Reports the time of each stage and the child process's peak RSS. The
goal on a 2-core CPU: under 60 s and 4 GB for 1,000,000 rows. Writes ``benchmarks/results/data_scale.json``.
"""

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seo_cli.config import DataConfig, TargetConfig

TEXT = ["title", "meta_description", "body"]
NUMERIC = [
    "word_count",
    "title_length",
    "backlinks",
    "domain_authority",
    "page_speed",
    "keyword_density",
    "internal_links",
    "mobile_friendly",
    "https",
]


def data_config(path: Path) -> DataConfig:
    return DataConfig(
        source="file",
        path=str(path),
        text_columns=TEXT,
        numeric_columns=NUMERIC,
        categorical_columns=["cms"],
        targets=[
            TargetConfig("intent", "classification"),
            TargetConfig("quality", "classification"),
            TargetConfig("ctr", "regression"),
            TargetConfig("position", "regression"),
        ],
        max_length=64,
        vocab_size=8000,
    )


def measure(path: Path) -> dict:
    """Run in the child process: time each stage of the data step on ``path``."""
    from seo_cli.data import pipeline

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    data = data_config(path)
    started = time.perf_counter()
    splits = pipeline.load_splits(data, seed=42)
    read_s = time.perf_counter() - started
    prepared = pipeline.prepare_data(data, seed=42)  # reads again, then fits and tensorizes
    total_s = time.perf_counter() - started - read_s
    rows = {name: len(split) for name, split in prepared.splits.items()}
    return {
        "read_and_check_s": read_s,
        "read_fit_tensorize_s": total_s,
        "rows": rows,
        "splits_read": {name: len(frame) for name, (frame, _) in splits.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "data_scale.json")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    from seo_cli.data.seo_pages import generate_seo_pages

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pages.csv"
        started = time.perf_counter()
        generate_seo_pages(num_rows=args.rows, seed=0).to_csv(path, index=False)
        print(
            f"wrote {args.rows:,} rows, {path.stat().st_size / 2**20:.0f} MiB, in {time.perf_counter() - started:.0f} s"
        )
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True, check=False
        )
        if child.returncode != 0:
            sys.exit(child.stderr[-3000:])
        result = json.loads(child.stdout.splitlines()[-1]) | {
            "rows_in_file": args.rows,
            "file_mb": path.stat().st_size / 2**20,
        }
    print(
        f"read + check: {result['read_and_check_s']:.1f} s; read + check + fit + tensorize: "
        f"{result['read_fit_tensorize_s']:.1f} s; peak RSS {result['peak_rss_mb']:.0f} MiB; splits {result['rows']}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

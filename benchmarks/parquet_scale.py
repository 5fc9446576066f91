"""Data larger than memory (issue 21): one epoch of ``seo-train data=parquet_dir model=seo_multitask``
on a directory of Parquet shards, with the peak memory of the whole process tree, on the CPU.

    python benchmarks/parquet_scale.py                              # 250,000 and 1,000,000 rows; then 20,000,000
    python benchmarks/parquet_scale.py --sizes 250000 --big 0       # a quicker look
    python benchmarks/parquet_scale.py --sizes 500000 --big 0 --add # one more size beside the results

Writes built-in ``seo_pages`` rows (title, meta description and body text, nine numeric signals, the
``cms`` category, the four targets, a ``split`` column: 98% train, 1% val, 1% test) as shards of 250,000
rows in row groups of 65,536, once, under ``--dir``. The first ``--unique-rows`` rows are drawn from
the generator (a seed per shard); later shards repeat them with their own page ids and split draws (the
generator takes about 2.3 s per 100,000 rows, 8 minutes for 20,000,000). Each size is a directory of
links to the first shards.

Per size in ``--sizes``: ``seo-train`` in its own process, the way a user runs it (``data=parquet_dir
data.split_column=split model=seo_multitask epochs=1 device=cpu logger=none``, the default batch of 128,
2 DataLoader workers), to the end of the epoch and its validation and test passes. The process tree's
memory (RSS, summed over the trainer and its workers: shared pages counted once per process, an upper
bound; and PSS, which shares them out) is sampled every 0.5 s. The rows/s is the epoch's training
rows over its training seconds (the run's ``speed/samples_per_second``). The stages' seconds come from the
run's log: the scan (schema and values of every shard), the sample the preprocessing is fitted on, the
epoch, the rest. ``--big`` rows run the same command for ``--big-seconds`` of training, then get SIGTERM
(the run saves last.pt and stops, as a pre-empted job would): the memory of a 20,000,000-row run and its
rate, the epoch's time extrapolated from it. Goal: peak memory under 3 GB whatever the row count.
The CPU is shared with other work: the load average and the CPU the rest of the machine took are
recorded with each run. Writes ``benchmarks/results/parquet_scale_cpu.json``.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import git_revision, machine, version
from rich.console import Console
from rich.table import Table

from seo_cli.data.seo_pages import NUMERIC_COLUMNS, TEXT_COLUMNS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "parquet_scale_cpu.json"
SHARD_ROWS = 250_000
ROW_GROUP = 65_536
LIMIT_MB = 3 * 1024
TEXT = TEXT_COLUMNS
NUMERIC = NUMERIC_COLUMNS  # seo_pages' numeric columns


def split_draws(shard: int) -> np.ndarray:
    return np.random.default_rng([21, shard]).choice(
        ["train", "val", "test"], SHARD_ROWS, p=[0.98, 0.01, 0.01]
    )


def write_unique(args: tuple[int, Path]) -> None:
    """Shard ``shard`` drawn from the generator (its own seed)."""
    from seo_cli.data.seo_pages import generate_seo_pages

    shard, path = args
    frame = generate_seo_pages(SHARD_ROWS, seed=1000 + shard)
    frame["page_id"] = [f"page-{shard * SHARD_ROWS + i:09d}" for i in range(SHARD_ROWS)]
    frame["split"] = split_draws(shard)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=ROW_GROUP)


def write_repeat(args: tuple[int, Path, Path]) -> None:
    """Shard ``shard`` as a unique shard's rows with its own page ids and split draws."""
    shard, source, path = args
    table = pq.read_table(source)
    ids = pa.array([f"page-{shard * SHARD_ROWS + i:09d}" for i in range(SHARD_ROWS)])
    table = table.set_column(table.schema.get_field_index("page_id"), "page_id", ids)
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(split_draws(shard)))
    pq.write_table(table, path, row_group_size=ROW_GROUP)


def make_shards(root: Path, rows: int, unique_rows: int) -> Path:
    """``root/all`` holds the shards of the largest size (made once, kept); ``root/<rows>`` links to the first."""
    shards = -(-rows // SHARD_ROWS)
    unique = max(1, unique_rows // SHARD_ROWS)
    store = root / "all"
    store.mkdir(parents=True, exist_ok=True)
    path = [store / f"part-{i:05d}.parquet" for i in range(shards)]
    todo = [i for i in range(shards) if not path[i].exists()]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_unique, [(i, path[i]) for i in todo if i < unique]))
        list(pool.map(write_repeat, [(i, path[i % unique], path[i]) for i in todo if i >= unique]))
    directory = root / str(rows)
    if not directory.exists():
        directory.mkdir()
        for p in path:
            (directory / p.name).symlink_to(p)
    return directory


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) summed over ``pids``, in MB."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def train_argv(directory: Path, run_dir: Path) -> list[str]:
    script = Path(sys.executable).parent / "seo-train"
    start = [str(script)] if script.exists() else [sys.executable, "-m", "seo_cli.train"]
    return [
        *start,
        "data=parquet_dir",
        f"data.path={directory}",
        "data.split_column=split",
        f"data.text_columns=[{','.join(TEXT)}]",
        f"data.numeric_columns=[{','.join(NUMERIC)}]",
        "data.categorical_columns=[cms]",
        "data.targets=[{name:intent,type:classification},{name:quality,type:classification},"
        "{name:ctr,type:regression},{name:position,type:regression}]",
        "data.numeric_scaling=power",
        "data.max_length=48",
        "data.vocab_size=4000",
        "model=seo_multitask",
        "epochs=1",
        "device=cpu",
        "logger=none",
        "trainer.progress=plain",
        "trainer.log_every_n_steps=200",
        f"hydra.run.dir={run_dir}",
    ]


def run(directory: Path, run_dir: Path, stop_after_s: float | None) -> dict:
    """One seo-train run, its process tree's memory sampled every 0.5 s; SIGTERM after ``stop_after_s``
    seconds of training (counted from its first logged step), if given."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    load = os.getloadavg()
    busy, start, launched = busy_cpu_s(), time.perf_counter(), time.time()
    with open(run_dir.parent / f"{run_dir.name}.out", "wb") as out:
        child = subprocess.Popen(train_argv(directory, run_dir), stdout=out, stderr=subprocess.STDOUT)
        peak_rss = peak_pss = 0.0
        trained_at = None
        while child.poll() is None:
            pids = tree(child.pid)
            rss, pss = memory_mb(pids)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            if stop_after_s is not None:
                if trained_at is None and (run_dir / "metrics.jsonl").exists():
                    trained_at = time.perf_counter()
                if trained_at is not None and time.perf_counter() - trained_at > stop_after_s:
                    child.send_signal(signal.SIGTERM)
                    stop_after_s = None
            time.sleep(0.5)
    wall = time.perf_counter() - start
    cpu = busy_cpu_s() - busy
    log = (run_dir / "train.log").read_text()
    if child.returncode not in (0, 143):
        sys.exit(f"seo-train failed ({child.returncode}):\n{log[-3000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["speed/samples_per_second"] for m in metrics if "speed/samples_per_second" in m]
    counts = re.search(r"train ([\d,]+), val ([\d,]+), test ([\d,]+) rows", log)
    rows = {
        k: int(v.replace(",", "")) for k, v in zip(("train", "val", "test"), counts.groups(), strict=True)
    }
    return {
        "exit_code": child.returncode,
        "rows": rows,
        "wall_s": wall,
        "stages_s": stages(log, wall, launched),
        "samples_per_second": speeds[-1] if speeds else None,
        "epoch_done": any("epoch" in m and "val/loss" in m for m in metrics),
        "steps_logged": metrics[-1].get("step") if metrics else None,
        "peak_rss_tree_mb": peak_rss,
        "peak_pss_tree_mb": peak_pss,
        "machine_busy_cores": cpu / wall,  # the whole machine, this run included
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }


def stages(log: str, wall: float, launched: float) -> dict:
    """Seconds between the run's milestones, from its log's time stamps (``start-up``: imports and Hydra)."""

    def at(pattern: str) -> float | None:
        match = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^]]+\]\[\w+\] - " + pattern, log)
        return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if match else None

    marks = {
        "start-up": at("Scanning the Parquet shards"),
        "scan": at("Data: Parquet shards"),
        "fit_sample": at("Preprocessing fitted"),
        "build": at("Model SEOMultitask"),
        "epoch_and_validation": at("epoch 1/1 done") or at("SIGTERM"),
    }
    out, previous = {}, launched
    for name, t in marks.items():
        if t is not None and previous is not None:
            out[name] = round(t - previous, 1)
            previous = t
    out["other"] = round(wall - sum(out.values()), 1)  # imports, the test pass, writing the summary
    return out


def table(results: dict) -> Table:
    t = Table(title="seo-train data=parquet_dir model=seo_multitask, one epoch, 2-core CPU")
    for column in (
        "rows",
        "train rows",
        "epoch",
        "rows/s",
        "peak RSS (tree)",
        "peak PSS (tree)",
        "machine busy",
    ):
        t.add_column(column, justify="right")
    for size, r in results.items():
        epoch = "full" if r["epoch_done"] else f"stopped at step {r['steps_logged']}"
        t.add_row(
            f"{int(size):,}",
            f"{r['rows']['train']:,}",
            epoch,
            f"{r['samples_per_second']:,.0f}",
            f"{r['peak_rss_tree_mb']:,.0f} MB",
            f"{r['peak_pss_tree_mb']:,.0f} MB",
            f"{r['machine_busy_cores']:.2f} cores",
        )
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[250_000, 1_000_000])
    parser.add_argument(
        "--big", type=int, default=20_000_000, help="rows trained on for --big-seconds; 0: none"
    )
    parser.add_argument("--big-seconds", type=float, default=240)
    parser.add_argument("--unique-rows", type=int, default=2_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/seo_parquet_scale"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--add", action="store_true", help="keep the other sizes' results already in --out")
    args = parser.parse_args()
    started = time.perf_counter()
    make_shards(args.dir, max([*args.sizes, args.big]), args.unique_rows)
    generated = time.perf_counter() - started
    results = json.loads(args.out.read_text())["results"] if args.add and args.out.exists() else {}
    for size in args.sizes:
        results[str(size)] = run(
            make_shards(args.dir, size, args.unique_rows), args.dir / f"run_{size}", None
        )
        save(args, results, generated)  # each run as it ends: a later one may be cut short
        Console().print(table(results))
    if args.big:
        big = run(
            make_shards(args.dir, args.big, args.unique_rows), args.dir / f"run_{args.big}", args.big_seconds
        )
        big["epoch_s_extrapolated"] = big["rows"]["train"] / big["samples_per_second"]
        results[str(args.big)] = big
        save(args, results, generated)
    Console().print(table(dict(sorted(results.items(), key=lambda item: int(item[0])))))
    print(f"wrote {args.out}")


def save(args: argparse.Namespace, results: dict, generated: float) -> None:
    import seo_cli

    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "seo-train data=parquet_dir model=seo_multitask, one epoch, peak memory of the process "
        "tree (issue 21); see the module docstring",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "versions": {p: version(p) for p in ("torch", "pyarrow", "pandas", "tokenizers")}
        | {"python": sys.version.split()[0]},
        "git": git_revision(),
        "seo_cli_imported_from": str(Path(seo_cli.__file__).parent),
        "shard_rows": SHARD_ROWS,
        "row_group_rows": ROW_GROUP,
        "unique_rows": args.unique_rows,
        "limit_mb": LIMIT_MB,
        "met": all(r["peak_rss_tree_mb"] < LIMIT_MB for r in results.values()),
        "generate_s": generated,
        "results": dict(sorted(results.items(), key=lambda item: int(item[0]))),
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""seo-predict on the CPU with the PyTorch backend against onnxruntime (issue 22, "Export for serving"):
rows/s and peak memory of the real commands, per model.

    python benchmarks/onnx_predict.py                                  # 100,000 rows, both models, 3 rounds
    python benchmarks/onnx_predict.py --rows 20000 --repeats 1         # a quicker look
    python benchmarks/onnx_predict.py --models transformer --repeats 5

Setup (not timed), in a temporary directory: per model, ``seo-train model=<m> debug=smoke logger=none``
(600 synthetic rows, one epoch: the layers and vocabulary of the model's default config, so its size
and its cost per row are what a user gets; its accuracy does not matter here) and ``seo-export`` of
its ``best.pt`` (which itself checks the export against PyTorch). The rows:
``generate_seo_pages(--rows, seed=3)`` less its four targets, written once as CSV, and its first
``--small-rows`` rows as a second CSV.

Measured, each as its own subprocess (the console scripts of this interpreter's environment, not a
pyenv shim): ``seo-predict checkpoint=best.pt device=cpu`` (torch) and ``seo-predict backend=onnx
model=model.onnx`` (onnxruntime, no torch), both at the default ``batch_size`` (1024), on the large
file and on the small one. A round runs every (model, backend, file) once, the two backends in
alternating order from round to round; ``--repeats`` rounds, each figure the median of its runs.

- whole command: ``--rows`` / wall time of the command on the large file (start-up, reading the CSV,
  checking, tokenizing, scoring, writing the CSV: what a user waits for).
- scoring: ``(--rows - --small-rows)`` / (median wall time on the large file - median on the small
  one): the fixed start-up (imports, Hydra, loading the model, opening the session) cancels, so this
  is the cost per row of reading, tokenizing, running the model and writing the output. seo-predict
  logs no timestamp between those stages, so they are not split further.
- peak RSS: ``ru_maxrss`` of the ``os.wait4`` of that one child, i.e. of the command's own process
  (and any children it waited for), not ``RUSAGE_CHILDREN`` of this process, which would be the
  maximum over every command run so far. The median over rounds, and the largest: the PyTorch
  backend's peak varies from run to run. Also its CPU time (user + system), which other load on the
  machine disturbs less than the wall time, and per run the CPU time the rest of the machine took
  meanwhile (``others_cpu_s``, from ``/proc/stat``): a run another process competed with shows there.

The two backends' outputs on the large file (the last round's) are compared: the same columns and
rows, class columns equal, numeric columns within ``rtol=1e-4, atol=1e-6``; the result is in the
JSON, and a mismatch fails the run (exit 1) after the figures are written, so a ratio can never
silently compare different work. Prints a table and writes
``benchmarks/results/onnx_predict_cpu.json``. CPU timings are only as good as the machine is idle:
the load average is recorded, and a warning printed when it is high.
"""

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import git_revision, machine, version
from rich.console import Console
from rich.table import Table

log = logging.getLogger("onnx_predict")

RESULTS = Path(__file__).parent / "results" / "onnx_predict_cpu.json"
MODELS = ["seo_multitask", "transformer"]
BACKENDS = ["torch", "onnx"]
TRAIN_OVERRIDES = ["debug=smoke", "logger=none"]
RTOL, ATOL = 1e-4, 1e-6
PLACEHOLDERS = {"checkpoint": "<train dir>/checkpoints/best.pt", "onnx": "<export>/model.onnx"}


def command(name: str) -> list[str]:
    """The console script ``name`` of this interpreter's environment (a pyenv or conda shim adds its
    own start-up and processes), else the module."""
    script = Path(sys.executable).parent / name
    modules = {"seo-train": "seo_cli.train", "seo-export": "seo_cli.export", "seo-predict": "seo_cli.predict"}
    return [str(script)] if script.exists() else [sys.executable, "-m", modules[name]]


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run(argv: list[str], cwd: Path, logs: Path) -> dict:
    """Run ``argv`` to its end; its wall time, CPU time and peak RSS (that one child's, from wait4), and
    the CPU time everything else on the machine took meanwhile (``others_cpu_s``: another process
    competing for the 2 cores shows there).

    Raises:
        SystemExit: the command failed (with the end of its stderr).
    """
    logs.parent.mkdir(parents=True, exist_ok=True)
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        busy = busy_cpu_s()
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        # wait4 on this pid: the rusage of this child alone. Popen.wait() would reap it without one.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        busy = busy_cpu_s() - busy if busy is not None else None
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: Popen must not wait again
    if child.returncode != 0:
        tail = "\n".join(logs.with_suffix(".err").read_text(errors="replace").strip().splitlines()[-15:])
        sys.exit(f"{' '.join(argv)} exited with {child.returncode}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "others_cpu_s": max(busy - cpu, 0.0) if busy is not None else None,
    }


def prepare_model(model: str, directory: Path) -> dict:
    """Train ``model`` briefly and export it; the files seo-predict's two backends score with."""
    train_dir, export_dir = directory / model / "train", directory / model / "export"
    run(
        [*command("seo-train"), f"model={model}", *TRAIN_OVERRIDES, f"hydra.run.dir={train_dir}"],
        directory,
        directory / "logs" / f"{model}-train",
    )
    checkpoint = train_dir / "checkpoints" / "best.pt"
    onnx = directory / model / "onnx" / "model.onnx"
    run(
        [*command("seo-export"), f"checkpoint={checkpoint}", f"output={onnx}", f"hydra.run.dir={export_dir}"],
        directory,
        directory / "logs" / f"{model}-export",
    )
    sidecar = json.loads(onnx.with_suffix(".json").read_text())
    return {
        "checkpoint": checkpoint,
        "onnx": onnx,
        "info": {
            "train_overrides": [f"model={model}", *TRAIN_OVERRIDES],
            "parameters": parameters(train_dir),
            "onnx_mb": onnx.stat().st_size / 2**20,
            "checkpoint_mb": checkpoint.stat().st_size / 2**20,
            "vocab_size": vocab_size(sidecar),
            "max_length": sidecar["preprocessing"]["max_length"],
        },
    }


def parameters(train_dir: Path) -> int | None:
    """The model's parameter count, from the training log's line ``Model X: N parameters, on ...``."""
    for line in (train_dir / "train.log").read_text().splitlines():
        if " parameters, on " in line:
            return int(line.split(" parameters, on ")[0].rsplit(" ", 1)[-1].replace(",", ""))
    return None


def vocab_size(sidecar: dict) -> int | None:
    """The size of the export's tokenizer vocabulary (the token embedding's rows)."""
    try:
        return len(json.loads(sidecar["preprocessing"]["tokenizer_json"])["model"]["vocab"])
    except (ValueError, KeyError, TypeError):
        return None


def predict_argv(backend: str, files: dict, rows: Path, output: Path, run_dir: Path) -> list[str]:
    if backend == "torch":
        model = [f"checkpoint={files['checkpoint']}", "device=cpu"]
    else:
        model = ["backend=onnx", f"model={files['onnx']}"]
    return [*command("seo-predict"), *model, f"input={rows}", f"output={output}", f"hydra.run.dir={run_dir}"]


def compare(torch_csv: Path, onnx_csv: Path) -> dict:
    """Whether the two backends wrote the same predictions: columns, rows, classes, numbers."""
    a, b = pd.read_csv(torch_csv), pd.read_csv(onnx_csv)
    result: dict = {
        "same_columns": list(a.columns) == list(b.columns),
        "rows": [len(a), len(b)],
        "tolerance": {"rtol": RTOL, "atol": ATOL},
        "columns": {},
    }
    if not result["same_columns"] or len(a) != len(b):
        result["columns_torch"], result["columns_onnx"] = list(a.columns), list(b.columns)
        result["agree"] = False
        return result
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            x, y = x.to_numpy(np.float64), y.to_numpy(np.float64)
            diff = np.abs(x - y)
            scale = np.maximum(np.abs(x), np.abs(y))
            result["columns"][column] = {
                "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
                "max_rel_diff": float((diff / np.where(scale > 0, scale, 1)).max()) if len(diff) else 0.0,
                "ok": bool(np.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)),
            }
        else:
            differ = int((x.astype(str) != y.astype(str)).sum())
            result["columns"][column] = {"rows_differ": differ, "ok": differ == 0}
    result["agree"] = all(c["ok"] for c in result["columns"].values())
    return result


def summarise(runs: dict[str, list[dict]], rows: int, small_rows: int) -> dict:
    """Medians of one (model, backend)'s runs, and its two rows/s figures."""
    median = {
        size: {k: statistics.median(r[k] for r in runs[size]) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        for size in runs
    }
    scoring_s = median["large"]["wall_s"] - median["small"]["wall_s"]
    return {
        "wall_s": median["large"]["wall_s"],
        "cpu_s": median["large"]["cpu_s"],
        "peak_rss_mb": median["large"]["peak_rss_mb"],
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs["large"]),
        "rows_per_s_whole": rows / median["large"]["wall_s"],
        "small_wall_s": median["small"]["wall_s"],
        "small_peak_rss_mb": median["small"]["peak_rss_mb"],
        "scoring_s": scoring_s,
        "rows_per_s_scoring": (rows - small_rows) / scoring_s if scoring_s > 0 else None,
        "runs": runs,
    }


def ratios(results: dict) -> dict:
    """onnx / torch for each figure where larger-or-smaller is meaningful."""
    torch_, onnx = results["torch"], results["onnx"]

    def over(key: str) -> float | None:
        return onnx[key] / torch_[key] if onnx.get(key) and torch_.get(key) else None

    return {
        "rows_per_s_whole": over("rows_per_s_whole"),
        "rows_per_s_scoring": over("rows_per_s_scoring"),
        "peak_rss": over("peak_rss_mb"),
        "cpu_s": over("cpu_s"),
    }








def table(results: dict, rows: int, small_rows: int, repeats: int) -> Table:
    out = Table(
        title=f"seo-predict on {rows:,} rows, CPU ({os.cpu_count()} cores), median of {repeats}; "
        f"scoring = ({rows:,} - {small_rows:,}) rows over the wall-time difference of the two runs"
    )
    columns = [
        "model",
        "backend",
        "wall s",
        "rows/s whole",
        "rows/s scoring",
        "CPU s",
        "peak RSS MiB",
        "(max)",
    ]
    columns += [f"wall s ({small_rows:,})", f"RSS MiB ({small_rows:,})", "outputs agree"]
    for column in columns:
        out.add_column(column, justify="left" if column in ("model", "backend", "outputs agree") else "right")
    for model, result in results.items():
        agree = "yes" if result["outputs_agree"]["agree"] else "NO"
        for backend in BACKENDS:
            r = result[backend]
            scoring = f"{r['rows_per_s_scoring']:,.0f}" if r["rows_per_s_scoring"] else "-"
            out.add_row(
                model,
                backend,
                f"{r['wall_s']:.1f}",
                f"{r['rows_per_s_whole']:,.0f}",
                scoring,
                f"{r['cpu_s']:.1f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['peak_rss_mb_max']:,.0f}",
                f"{r['small_wall_s']:.1f}",
                f"{r['small_peak_rss_mb']:,.0f}",
                agree if backend == "onnx" else "",
            )
        ratio = result["onnx_over_torch"]

        def x(key: str, ratio: dict = ratio) -> str:
            return f"{ratio[key]:.2f}x" if ratio[key] else "-"

        out.add_row(
            model, "onnx/torch", "", x("rows_per_s_whole"), x("rows_per_s_scoring"), x("cpu_s"), x("peak_rss"),
            "", "", "", "", end_section=True,
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the timed file")
    parser.add_argument(
        "--small-rows", type=int, default=1_000, help="rows of the file whose time is the fixed start-up"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each figure the median")
    parser.add_argument(
        "--models", nargs="+", default=MODELS, help="model config groups: seo_multitask, transformer, ..."
    )
    parser.add_argument("--out", "--output", dest="out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    if not 0 < args.small_rows < args.rows:
        parser.error("--small-rows must be between 0 and --rows")

    load_before = os.getloadavg()[0]
    if load_before > 0.25 * (os.cpu_count() or 1):
        log.warning(
            "Load average %.1f on %d cores: other processes will slow the timings.",
            load_before,
            os.cpu_count(),
        )
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="seo-onnx-predict-") as tmp:
        directory = Path(tmp)
        from seo_cli.data import seo_pages

        frame = seo_pages.generate_seo_pages(args.rows, seed=3).drop(
            columns=["intent", "quality", "ctr", "position"]
        )
        inputs = {"large": directory / "rows.csv", "small": directory / "rows_small.csv"}
        frame.to_csv(inputs["large"], index=False)
        frame.head(args.small_rows).to_csv(inputs["small"], index=False)
        del frame
        log.info(
            "wrote %s rows (%.0f MiB) and %s rows",
            f"{args.rows:,}",
            inputs["large"].stat().st_size / 2**20,
            f"{args.small_rows:,}",
        )

        files = {}
        for model in args.models:
            log.info("%s: train (%s) and export", model, " ".join(TRAIN_OVERRIDES))
            files[model] = prepare_model(model, directory)
        setup_s = time.perf_counter() - started

        runs = {m: {b: {"small": [], "large": []} for b in BACKENDS} for m in args.models}
        counts = {"large": args.rows, "small": args.small_rows}
        for round_ in range(args.repeats):
            for model in args.models:
                for backend in BACKENDS if round_ % 2 == 0 else BACKENDS[::-1]:
                    for size in ("small", "large"):
                        output = directory / model / f"scores_{backend}_{size}.csv"
                        name = f"{model}-{backend}-{size}-{round_}"
                        argv = predict_argv(
                            backend, files[model], inputs[size], output, directory / "runs" / name
                        )
                        figures = run(argv, directory, directory / "logs" / name)
                        runs[model][backend][size].append(figures)
                        log.info(
                            "round %d/%d %s %s %s rows: %.1f s, CPU %.1f s, peak RSS %.0f MiB; "
                            "other processes' CPU meanwhile %s s",
                            *(round_ + 1, args.repeats, model, backend, f"{counts[size]:,}"),
                            *(figures["wall_s"], figures["cpu_s"], figures["peak_rss_mb"]),
                            "-" if figures["others_cpu_s"] is None else f"{figures['others_cpu_s']:.1f}",
                        )
        for model in args.models:
            result = {b: summarise(runs[model][b], args.rows, args.small_rows) for b in BACKENDS}
            result["onnx_over_torch"] = ratios(result)
            result["outputs_agree"] = compare(
                *(directory / model / f"scores_{b}_large.csv" for b in BACKENDS)
            )
            result["model"] = files[model]["info"]
            results[model] = result
            for backend in BACKENDS:
                argv = predict_argv(
                    backend, PLACEHOLDERS, Path("rows.csv"), Path("scores.csv"), Path("<dir>")
                )
                result[backend]["command"] = " ".join(["seo-predict", *argv[len(command("seo-predict")) :]])

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table(results, args.rows, args.small_rows, args.repeats))
    report = {
        "benchmark": "seo-predict rows/s and peak RSS, backend torch vs onnx (issue 22); see the module docstring",
        "command": " ".join(["python", "benchmarks/onnx_predict.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "versions": {
            "python": platform.python_version(),
            **{p: version(p) for p in ("seo-cli", "torch", "onnxruntime", "onnx", "onnxscript", "pandas")},
        },
        "git": git_revision(),
        "rows": args.rows,
        "small_rows": args.small_rows,
        "repeats": args.repeats,
        "batch_size": "seo-predict's default (1024)",
        "input": f"seo_pages.generate_seo_pages({args.rows}, seed=3) less intent, quality, ctr, position, as CSV",
        "measure": {
            "rows_per_s_whole": "rows / median wall time of the whole command on the large file",
            "rows_per_s_scoring": "(rows - small_rows) / (median wall on the large file - median wall on the small)",
            "peak_rss_mb": "ru_maxrss of os.wait4 on the command's process (median over rounds)",
            "cpu_s": "user + system CPU seconds of the command on the large file (median)",
            "others_cpu_s": "per run: busy CPU seconds of the machine (/proc/stat) less the command's own",
        },
        "setup_s": setup_s,
        "total_s": time.perf_counter() - started,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("Wrote %s", args.out)
    disagree = [m for m, r in results.items() if not r["outputs_agree"]["agree"]]
    if disagree:
        log.error(
            "The backends' outputs differ for %s: see outputs_agree in %s", ", ".join(disagree), args.out
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

"""DDP scaling of the W2 transformer (see speed.py): ``seo-train device=ddp`` on 1, 2, 4, ... GPUs of one
machine with the same per-process batch, tokens/s and scaling efficiency against 1 GPU, and the
exactness check: the validation metrics each run logged equal ``seo-eval split=val`` of its best
weights in one process.

    python benchmarks/ddp_scaling.py --devices 1 2 4          # GPUs (NCCL)
    python benchmarks/ddp_scaling.py --quick --devices 1 2 4  # gloo processes on the CPU: checks the script

Each run is the real command (a subprocess), so the figures include DDP's gradient all-reduce,
DistributedSampler and rank 0's logging and checkpoints. Throughput is epoch 2's (epoch 1 holds
warm-up): the whole job's rows/s from ``metrics.jsonl`` times the sequence length. Writes
``benchmarks/results/ddp_scaling.json``.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from speed import QUICK, WORKLOADS, seo_train_overrides, text_data  # noqa: E402

from seo_cli.config import config_dir, register_configs  # noqa: E402
from seo_cli.evaluate import run_eval  # noqa: E402


def run(devices: int, data, work, directory: Path, cpu: bool) -> dict:
    run_dir = directory / f"ddp{devices}"
    command = [
        sys.executable,
        "-m",
        "seo_cli.train",
        "device=ddp",
        f"device.num_devices={devices}",
        f"device.type={'cpu' if cpu else 'cuda'}",
        f"device.precision={'32' if cpu else work.precision}",
        *seo_train_overrides(work, data),
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{devices} device(s) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "epoch" in row]
    tokens_per_second = epochs[-1]["speed/samples_per_second"] * work.seq
    return {
        "devices": devices,
        "tokens_per_second": tokens_per_second,
        "global_batch": work.batch_size * devices,
        "val_loss": epochs[-1]["val/loss"],
        "exact": exactness(run_dir),
    }


def exactness(run_dir: Path) -> dict:
    """The largest difference between the validation metrics the run logged for its best epoch and
    a single-process evaluation of best.pt."""
    best = run_dir / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    [logged] = [row for row in state["history"] if row["epoch"] == state["best"]["epoch"]]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("eval", overrides=[f"checkpoint='{best}'", "split=val", "bootstrap=0", "report=false"])
    result = run_eval(cfg, run_dir / "eval")
    differences = [
        abs(result["metrics"][k] - v) for k, v in logged.items() if k.startswith("val/") and not math.isnan(v)
    ]
    return {
        "metrics_compared": len(differences),
        "max_abs_difference": max(differences),
        "rows": result["rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, default=32_768, help="training sequences (W2 has 16,384)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on CPU processes (gloo)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "ddp_scaling.json")
    args = parser.parse_args()
    register_configs()
    cpu = args.quick or not torch.cuda.is_available()
    work = QUICK["w2"] if args.quick else replace(WORKLOADS["w2"], rows=args.rows)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = text_data(work, Path(tmp), np.random.default_rng(0))
        for devices in args.devices:
            results.append(run(devices, data, work, Path(tmp), cpu))
    base = results[0]["tokens_per_second"] / results[0]["devices"]
    for row in results:
        row["speedup"] = row["tokens_per_second"] / results[0]["tokens_per_second"]
        row["scaling_efficiency"] = row["tokens_per_second"] / (base * row["devices"])
    device = "cpu (gloo)" if cpu else torch.cuda.get_device_name()
    table = Table(title=f"W2 transformer under DDP on {device}, batch {work.batch_size} per process")
    for column in ("devices", "tokens/s", "speed-up", "efficiency", "val metrics vs 1-process eval"):
        table.add_column(column, justify="right")
    for row in results:
        exact = row["exact"]
        table.add_row(
            str(row["devices"]),
            f"{row['tokens_per_second']:,.0f}",
            f"{row['speedup']:.2f}x",
            f"{row['scaling_efficiency']:.1%}",
            f"max |diff| {exact['max_abs_difference']:.1e} over {exact['metrics_compared']} metrics",
        )
    Console().print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "device": device,
                "torch": torch.__version__,
                "workload": vars(work) if hasattr(work, "__dict__") else str(work),
                "runs": results,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()

"""What monitoring costs: the W1 tabular workload (see speed.py) trained by seo-train with its default
monitoring (TensorBoard, metrics.jsonl, a log line every 50 steps, speed and memory figures) against
the same run with ``logger=none``, in this one process, runs interleaved A B A B ... so that a machine
that speeds up or slows down affects both alike.

    python benchmarks/monitoring_overhead.py                  # on the GPU if there is one
    python benchmarks/monitoring_overhead.py --rows 50000     # a CPU: a smaller epoch

Figures: epoch 2's training throughput (``speed/samples_per_second`` of the epoch row: the steps and
their log lines, not validation or checkpoints), the median over ``--repeats`` runs of each. The goal:
the monitored run within 3% of ``logger=none``. Writes ``benchmarks/results/monitoring_overhead.json``.
"""

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import WORKLOADS, Variant, quiet_libraries, run_ours, tabular_data  # noqa: E402

from seo_cli.config import register_configs  # noqa: E402

SETUPS = {"monitored (defaults)": (), "logger=none": ("logger=none",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=WORKLOADS["w1"].rows)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "monitoring_overhead.json"
    )
    args = parser.parse_args()
    register_configs()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = replace(WORKLOADS["w1"], rows=args.rows)
    figures: dict[str, list[float]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory() as tmp, quiet_libraries():
        data = tabular_data(work, Path(tmp), np.random.default_rng(0))
        for repeat in range(args.repeats):
            for name, overrides in SETUPS.items():
                result = run_ours(
                    work,
                    data,
                    device,
                    Variant(f"{repeat}-{len(figures[name])}-{overrides}", "d", overrides=overrides),
                )
                figures[name].append(result["steps_per_second"])
    median = {name: statistics.median(values) for name, values in figures.items()}
    overhead = 1 - median["monitored (defaults)"] / median["logger=none"]
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"W1 ({work.rows:,} rows, batch {work.batch_size}) on {device_name}, epoch-2 steps/s, median of {args.repeats}:"
    )
    for name, values in figures.items():
        print(f"  {name:22s} {median[name]:8.1f}   runs: {', '.join(f'{v:.1f}' for v in values)}")
    print(f"  monitoring costs {overhead:+.1%} of the throughput (goal: under 3%)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "device": device_name,
                "torch": torch.__version__,
                "rows": work.rows,
                "steps_per_second": figures,
                "median": median,
                "overhead": overhead,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()

"""Mixed precision on the transformer model: throughput and step memory of 32, bf16 and fp16 (and bf16
with torch.compile), each trained by seo-train's own ``train`` in this one process, on one device.

    python benchmarks/precision.py                     # a GPU: the figures in the README
    python benchmarks/precision.py --quick             # seconds on a CPU: checks the script runs

For each variant it reports epoch 2's samples/s (epoch 1 holds compilation and warm-up), the memory the
training steps add on top of what stays resident (``memory/step_mb``: activations, gradients and
temporaries, which precision changes), the peak allocated memory, and the validation loss, with
ratios to the 32-bit run. Writes ``benchmarks/results/precision.json``.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from seo_cli.config import config_dir, register_configs
from seo_cli.train import train

# A transformer wide and long enough that activations, not weights, dominate the step's memory.
WORKLOAD = [
    "model=transformer",
    "model.d_model=256",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.ffn_dim=1024",
    "data.max_length=256",
    "data.num_rows=16000",
    "batch_size=64",
    "eval_batch_size=256",
    "epochs=2",
    "logger=none",
    "trainer.progress=plain",
    "trainer.log_every_n_steps=100",
]
QUICK = [
    "data.num_rows=2000",
    "data.max_length=32",
    "model.d_model=32",
    "model.ffn_dim=64",
    "model.num_layers=1",
]
VARIANTS = {
    "32": ["device.precision=32"],
    "bf16": ["device.precision=bf16"],
    "fp16": ["device.precision=fp16"],
    "bf16+compile": ["device.precision=bf16", "compile=true"],
}


def run_variant(overrides: list[str], out: Path) -> dict:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    summary = train(cfg, out)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_epoch = [row for row in epochs if "epoch" in row][-1]
    return {
        "samples_per_second": last_epoch["speed/samples_per_second"],
        "step_memory_mb": last_epoch.get("memory/step_mb"),
        "peak_allocated_mb": last_epoch.get("memory/peak_allocated_mb"),
        "val_loss": last_epoch["val/loss"],
        "fp16_skipped_steps": summary["fp16_skipped_steps"],
        "device": summary["device"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU check of the script")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args = parser.parse_args()
    register_configs()
    import torch

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            overrides = WORKLOAD + (QUICK if args.quick else []) + VARIANTS[name]
            results[name] = run_variant(overrides, Path(tmp) / name)
            print(f"{name}: {results[name]}", file=sys.stderr)
    reference = results.get("32")
    print(
        f"\nTransformer (d_model 256, 4 layers, sequence 256, batch 64) on {device_name}, torch {torch.__version__}"
    )
    print(
        f"{'precision':<14}{'samples/s':>12}{'x 32-bit':>10}{'step MiB':>11}{'x 32-bit':>10}{'val loss':>10}"
    )
    for name, r in results.items():
        speed = r["samples_per_second"] / reference["samples_per_second"] if reference else float("nan")
        memory = (
            r["step_memory_mb"] / reference["step_memory_mb"]
            if reference and r["step_memory_mb"] and reference["step_memory_mb"]
            else float("nan")
        )
        step_mb = r["step_memory_mb"] if r["step_memory_mb"] is not None else float("nan")
        print(
            f"{name:<14}{r['samples_per_second']:>12.0f}{speed:>10.2f}{step_mb:>11.0f}{memory:>10.2f}"
            f"{r['val_loss']:>10.4f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"device": device_name, "torch": torch.__version__, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()

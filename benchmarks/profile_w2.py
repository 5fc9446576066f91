"""Where W2's step time goes (see speed.py): torch.profiler over 10 steps of the hand-tuned loop on the W2
transformer (bf16 autocast, fused AdamW, optionally compiled), kernels grouped by kind, with the share of
the step the GPU is busy and the matmul throughput it reaches.

    python benchmarks/profile_w2.py            # eager
    python benchmarks/profile_w2.py --compile

Writes ``benchmarks/results/profile_w2[_compile].json``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import WORKLOADS, build_model, flops_per_token  # noqa: E402

KINDS = {  # kernel name fragments -> kind, first match wins
    "attention": ("flash", "fmha", "attention", "efficient"),
    "matmul": ("gemm", "sm90", "sm80", "cutlass", "nvjet", "ampere", "xmma"),
    "optimizer": ("adam", "multi_tensor"),
    "layernorm/softmax/elementwise": (
        "norm",
        "elementwise",
        "vectorized",
        "reduce",
        "triton",
        "softmax",
        "gelu",
    ),
}


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, marks in KINDS.items() if any(m in lower for m in marks)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    work, device = WORKLOADS["w2"], torch.device("cuda")
    model, loss_fn = build_model(work, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=work.lr, fused=True)
    forward = torch.compile(model) if args.compile else model
    tokens = torch.randint(1, work.vocab, (work.batch_size, work.seq), device=device)
    labels = {"c": torch.randint(0, work.classes, (work.batch_size,), device=device)}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(forward({"tokens": tokens}), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    steps = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    by_kind: dict[str, float] = {}
    for event in profiler.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.self_device_time_total > 0:
            kind = kind_of(event.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + event.self_device_time_total / 1e6
    busy = sum(by_kind.values())
    flops = flops_per_token(work) * work.batch_size * work.seq * steps
    peak = 989.4e12
    result = {
        "device": torch.cuda.get_device_name(),
        "compile": args.compile,
        "step_ms": 1000 * wall / steps,
        "gpu_busy_share": busy / wall,
        "mfu": flops / wall / peak,
        "seconds_by_kind": {k: v for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "share_of_busy_time": {k: v / busy for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "matmul_tflops": 6
        * sum(p.numel() for n, p in model.named_parameters() if "embedding" not in n)
        * work.batch_size
        * work.seq
        * steps
        / by_kind.get("matmul", float("nan"))
        / 1e12,
        "top_kernels": [
            (e.key[:90], round(e.self_device_time_total / 1e3 / steps, 3))
            for e in sorted(profiler.key_averages(), key=lambda e: -e.self_device_time_total)[:12]
        ],
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / f"profile_w2{'_compile' if args.compile else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

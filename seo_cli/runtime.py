"""Process-level set-up shared by the entrypoints: device choice, seeding, resource figures."""

import contextlib
import logging
import os
import random
import resource
import signal
import sys

import numpy as np
import torch

from seo_cli.errors import UserError

log = logging.getLogger(__name__)


def pick_device(kind: str, fallback: str = "error") -> torch.device:
    """``auto`` takes CUDA, then Apple MPS, then the CPU; an explicit device that is missing is an error,
    or the CPU with a warning under ``device.fallback=warn``.

    Raises:
        UserError: the requested device is not available and ``fallback`` is ``error``.
    """
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if kind == "auto":
        return torch.device(next(k for k in ("cuda", "mps", "cpu") if available[k]))
    if available[kind]:
        return torch.device(kind)
    if fallback == "warn":
        log.warning("device.type=%s is not available on this machine; running on the CPU instead.", kind)
        return torch.device("cpu")
    raise UserError(
        f"device.type={kind} is not available on this machine; use device=auto or device=cpu, "
        "or set device.fallback=warn to fall back to the CPU."
    )


PRECISIONS = ("32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raises:
    UserError: ``precision`` is not one of PRECISIONS, or is bf16 on a GPU without bfloat16 support.
    """
    if precision not in PRECISIONS:
        raise UserError(f"device.precision={precision} is not a precision; use 32, bf16 or fp16.")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"device.precision=bf16 needs bfloat16 support, which {torch.cuda.get_device_name(device)} lacks "
            "(it needs an Ampere GPU or newer); use device.precision=fp16 or device.precision=32."
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for ``bf16`` and ``fp16``; a no-op context for ``32``."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16, whose narrow range would flush small gradients to zero; None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: (bf16/fp16 tensor cores, fp32 matmuls).
# fp32 is the TF32 tensor-core figure where torch lets matmuls use TF32, the plain FP32 one otherwise.
# Searched in this order, so "H100 PCIe" is found before "H100" and "L40S" before "L4".
_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0, 51.2),
    ("H100 NVL", 835.0, 418.0, 60.0),
    ("H100", 989.4, 494.7, 66.9),
    ("H200", 989.4, 494.7, 66.9),
    ("GH200", 989.4, 494.7, 66.9),
    ("B200", 2250.0, 1100.0, 80.0),
    ("A100", 312.0, 156.0, 19.5),
    ("L40S", 362.1, 183.0, 91.6),
    ("L4", 121.0, 60.0, 30.3),
    ("A10G", 70.0, 35.0, 31.2),
    ("A10", 125.0, 62.5, 31.2),
    ("V100", 125.0, 15.7, 15.7),
    ("T4", 65.0, 8.1, 8.1),
)


def peak_flops(device: torch.device, precision: str, peak_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s for ``precision``, the denominator of MFU.

    ``peak_tflops`` (``device.peak_tflops``) overrides the table; None where neither knows the device
    (the CPU, Apple MPS, an unlisted GPU): MFU is then not logged.
    """
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for model, half, tf32, fp32 in _PEAK_TFLOPS:
        if model in name:
            if precision != "32":
                return half * 1e12
            return (tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32) * 1e12
    log.info("No known peak FLOP/s for %s: set device.peak_tflops to log speed/mfu.", name)
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torch seeds each worker from the loader's generator; python and
    numpy are seeded here from that seed, so augmentation in a Dataset repeats run to run."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    # Ctrl-C reaches the whole process group: the main process saves and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def set_deterministic(enabled: bool) -> None:
    """Turn torch's deterministic algorithms on or off for this run (a later job of a sweep may differ).

    Deterministic mode raises on ops with no deterministic implementation instead of running them.
    """
    if enabled:
        # cuBLAS reads this when its handle is created; it must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on a GPU run (since the last reset of the peak); peak RSS otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux

"""Process-level set-up shared by the entrypoints: device choice, seeding, resource figures."""

import logging
import random
import resource
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on a GPU run; peak resident memory of the process otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux

"""Checkpoint files: one dict of tensors, numbers, strings, lists and dicts, written atomically.

Loading uses ``torch.load(weights_only=True)``, so a checkpoint can hold no object whose unpickling
runs code. Keys: ``format_version``, ``config`` (resolved YAML), ``preprocessing`` (plain data),
``model``, ``optimizer``, ``scheduler``, ``epoch``, ``global_step``, ``metrics``, ``history``,
``rng``, ``seo_cli_version``.
"""

import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seo_cli import __version__
from seo_cli.errors import UserError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "preprocessing", "model")


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same directory, fsync, then rename.

    A crash or kill at any moment leaves either the previous file or the new one under ``path``,
    never a truncated file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, "seo_cli_version": __version__, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Raises:
        UserError: the path is missing or a directory, or the file is not an seo-cli checkpoint
            (truncated, foreign, or holding objects that are not plain data).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"checkpoint {path} is a directory; give a .pt file in it, e.g. checkpoint={path / 'checkpoints' / 'best.pt'}."
        )
    if not path.exists():
        raise UserError(
            f"checkpoint {path} does not exist; give the path of a .pt file written by seo-train."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    # On foreign bytes torch.load raises IndexError, KeyError, ... as well as unpickling errors.
    except Exception as err:  # noqa: BLE001
        if not zipfile.is_zipfile(path):
            raise UserError(
                f"checkpoint {path} is not a PyTorch checkpoint file (it is truncated, corrupt, or another "
                "format); give a .pt file written by seo-train."
            ) from err
        if "Weights only load failed" in str(err):
            raise UserError(
                f"checkpoint {path} holds objects other than tensors and plain data (pickled code, say), "
                "so it is refused for safety; give a .pt file written by seo-train."
            ) from err
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"checkpoint {path} cannot be loaded as an seo-cli checkpoint ({reason[:160]}); "
            "it is truncated, corrupt, or not written by seo-train."
        ) from err
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise UserError(
            f"{path} is not an seo-cli checkpoint (it lacks the keys {', '.join(REQUIRED_KEYS)})."
        )
    if state["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {state['format_version']}, newer than this seo-cli "
            f"({__version__}) reads; upgrade seo-cli."
        )
    return state


def unwrap_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without wrapper prefixes (torch.compile's ``_orig_mod.``, DDP's ``module.``)."""
    inner = getattr(model, "_orig_mod", model)
    # By type, not by attribute: a user's model may well have a submodule named `module`.
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
        inner = inner.module
    return inner.state_dict()


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as plain data (numpy's key array becomes a tensor)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_target_allowed(target: str, key: str, allowed_prefixes: list[str]) -> None:
    """Refuse a ``_target_`` outside the allowed module prefixes before anything imports it.

    Raises:
        UserError: ``target`` does not start with any allowed prefix.
    """
    if not any(target == p.rstrip(".") or target.startswith(p.rstrip(".") + ".") for p in allowed_prefixes):
        raise UserError(
            f"{key}={target!r} is outside the modules seo-cli builds from ({', '.join(allowed_prefixes)}); "
            f"if you trust it, add its package with allowed_targets=[{target.split('.')[0]}]."
        )

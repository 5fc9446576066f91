"""Checkpoint files: one dict of tensors, numbers, strings, lists and dicts, written atomically.

Loading uses ``torch.load(weights_only=True)``, so a checkpoint can hold no object whose unpickling
runs code. Keys: ``format_version``, ``config`` (resolved YAML), ``preprocessing`` (plain data),
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``global_step``,
``position`` (where in the next epoch the loop stands, and its running sums), ``metrics``,
``history``, ``best``, ``early_stopping``, ``checkpoints`` (the manager's top-k list), ``rng``,
``seo_cli_version``.
"""

import logging
import math
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
from seo_cli.files import file_mode

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "preprocessing", "model")


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same directory, fsync, then rename.

    A crash or kill at any moment leaves either the previous file or the new one under ``path``,
    never a truncated file.
    """
    state = {"format_version": FORMAT_VERSION, "seo_cli_version": __version__, **state}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; a checkpoint is shared like any other output
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only or unwritable directory: the previous file stays
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise UserError(
            f"cannot write checkpoint {path}: {err.strerror or err}; free space or fix the permissions of "
            f"{path.parent} and resume with resume=auto (the previous {path.name} is intact)."
        ) from None
    except BaseException:
        if tmp is not None:
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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile's and DDP's wrappers, whose state dict has no added prefix."""
    inner = getattr(model, "_orig_mod", model)
    # By type, not by attribute: a user's model may well have a submodule named `module`.
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
        inner = getattr(inner.module, "_orig_mod", inner.module)
    return inner


def unwrap_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without wrapper prefixes (torch.compile's ``_orig_mod.``, DDP's ``module.``)."""
    return unwrap_model(model).state_dict()


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as plain data (numpy's key array becomes a tensor)."""
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured, so the resumed run draws the numbers the straight run would."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["key"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy.get("has_gauss", 0),
            numpy.get("cached_gaussian", 0.0),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning(
                "the checkpoint holds %d CUDA RNG states and this machine has %d GPUs; "
                "CUDA random numbers are re-seeded, so dropout differs from the original run.",
                len(cuda_states),
                torch.cuda.device_count(),
            )


def latest_checkpoint(directory: Path) -> Path | None:
    """The most recently written ``.pt`` file in ``directory`` (``last.pt`` in a normal run), or None."""
    files = [p for p in directory.glob("*.pt") if p.is_file()] if directory.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


class CheckpointManager:
    """Which checkpoint files a run writes into ``directory``, and which it deletes.

    - ``last.pt`` after every epoch, and every ``every_n_steps`` optimizer steps if set (for resume);
      not written under ``save_best_only``, except when the run is interrupted by a signal.
    - ``best.pt`` whenever the monitored metric improves.
    - ``save_top_k`` numbered files ``epoch=007-val_loss=0.4123.pt``, one per ``every_n_epochs``
      epochs, kept for the k best values of the metric (-1 keeps all, 0 none); ``max_checkpoints``
      then caps how many numbered files stay, deleting the oldest.

    ``extra`` holds what does not change during the run (resolved config, preprocessing). The
    manager's own state (the numbered files and their values) goes into every checkpoint it writes.
    ``write=False`` (DDP ranks other than 0) makes every decision and returns every path but touches no file.
    """

    def __init__(
        self,
        directory: str | Path,
        extra: dict[str, Any] | None = None,
        *,
        mode: str = "min",
        save_top_k: int = 0,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        save_best_only: bool = False,
        max_checkpoints: int | None = None,
        write: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.write = write
        self.extra = dict(extra or {})
        self.mode = mode
        self.save_top_k = save_top_k
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.save_best_only = save_best_only
        self.max_checkpoints = max_checkpoints
        self.numbered: list[dict[str, Any]] = []  # {"name", "value", "epoch"}, oldest first

    def state_dict(self) -> dict[str, Any]:
        return {"numbered": [dict(entry) for entry in self.numbered]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A file written after the checkpoint, then removed, is simply forgotten.
        self.numbered = [dict(e) for e in state["numbered"] if (self.directory / e["name"]).exists()]

    def wants_step_save(self, global_step: int) -> bool:
        return bool(self.every_n_steps) and not self.save_best_only and global_step % self.every_n_steps == 0

    def save(self, name: str, state: dict[str, Any]) -> Path:
        if not self.write:
            return self.directory / name
        return save_checkpoint(
            {**self.extra, **state, "checkpoints": self.state_dict()}, self.directory / name
        )

    def save_epoch(
        self, state: dict[str, Any], *, epoch: int, monitor: str, value: float, improved: bool
    ) -> tuple[Path | None, Path | None]:
        """Write the files due after ``epoch`` (1-based); returns (best.pt if written, last.pt if written).

        Order matters for a kill at any point: new files first, then deletions, then ``last.pt``, the
        file a resume starts from, so a resumed run redoes the epoch and rewrites the same files.
        """
        best = last = None
        evicted: list[dict[str, Any]] = []
        if self.save_top_k != 0 and epoch % self.every_n_epochs == 0 and not math.isnan(value):
            entry = {"name": numbered_name(epoch, monitor, value), "value": value, "epoch": epoch}
            self.numbered.append(entry)
            evicted = self._evictions()
            if entry not in evicted:
                self.save(entry["name"], state)
        if improved:
            best = self.save("best.pt", state)
        for entry in evicted if self.write else []:
            (self.directory / entry["name"]).unlink(missing_ok=True)
        if not self.save_best_only:
            last = self.save("last.pt", state)
        return best, last

    def _evictions(self) -> list[dict[str, Any]]:
        """Drop from ``self.numbered`` the entries beyond top-k, then beyond ``max_checkpoints``; return them."""
        kept = list(self.numbered)
        if self.save_top_k > 0:
            # Ties keep the earlier epoch, so the file set does not depend on float noise in the sort.
            sign = 1 if self.mode == "min" else -1
            ranked = sorted(kept, key=lambda e: (sign * e["value"], e["epoch"]))
            kept = [e for e in kept if e in ranked[: self.save_top_k]]
        if self.max_checkpoints is not None:
            kept = kept[-self.max_checkpoints :]
        evicted = [e for e in self.numbered if e not in kept]
        self.numbered = kept
        return evicted


def numbered_name(epoch: int, monitor: str, value: float) -> str:
    """``epoch=007-val_intent_accuracy=0.8123.pt``: the epoch and the monitored value, safe as a file name."""
    return f"epoch={epoch:03d}-{monitor.replace('/', '_')}={value:.4f}.pt"


def read_saved_config(path: Path, text: Any) -> Any:
    """The config a checkpoint carries, as a DictConfig with model, loss and data nodes.

    Raises:
        UserError: it does not parse or lacks those nodes (a damaged or foreign file; nothing is built).
    """
    from omegaconf import DictConfig, OmegaConf

    try:
        if not isinstance(text, str):
            raise ValueError("it is not YAML text")
        config = OmegaConf.create(text)
        if not isinstance(config, DictConfig) or not all(k in config for k in ("model", "loss", "data")):
            raise ValueError("it lacks the model, loss or data section")
    except Exception as err:  # yaml, OmegaConf and our own errors: one message for a file we cannot use
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{path} holds a config seo-cli cannot read ({reason}); use a checkpoint written by seo-train."
        ) from None
    return config


def check_targets_allowed(node: Any, key: str, allowed_prefixes: list[str]) -> None:
    """Refuse any ``_target_`` at any depth of ``node`` (plain containers) outside ``allowed_prefixes``:
    Hydra builds nested ``_target_`` nodes too, so every one of them is code the file would run.

    Raises:
        UserError: the first ``_target_`` outside the allowed prefixes, by its key path.
    """
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "_target_":
                check_target_allowed(str(value), f"{key}._target_", allowed_prefixes)
            else:
                check_targets_allowed(value, f"{key}.{name}", allowed_prefixes)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_targets_allowed(value, f"{key}[{index}]", allowed_prefixes)


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

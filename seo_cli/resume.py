"""Resuming a run: which checkpoint ``resume=`` points at, and whether the config still matches it."""

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seo_cli.checkpoint import latest_checkpoint, parse_stored_config
from seo_cli.errors import UserError

log = logging.getLogger(__name__)

# What the saved weights and optimizer state were made with: a change here makes the checkpoint
# a different run's. epochs, logging, checkpoint policy and early stopping may change freely.
RESUME_KEYS = (
    "model",
    "data",
    "loss",
    "optimizer",
    "scheduler",
    "seed",
    "batch_size",
    "trainer.accumulate_grad_batches",
)


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """``auto``: the latest checkpoint in ``run_dir/checkpoints``, or None when there is none (a fresh
    start, so a requeued job can always pass ``resume=auto``); anything else: that file.

    Raises:
        UserError: ``resume`` names a file that does not exist.
    """
    if resume == "auto":
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is None:
            log.warning(
                "resume=auto found no checkpoint in %s; starting a new run there. To continue an earlier run, "
                "give its directory with hydra.run.dir=<that run's directory>.",
                run_dir / "checkpoints",
            )
        return found
    path = Path(resume)
    if not path.is_file():
        raise UserError(
            f"resume={resume} is not a checkpoint file; give a .pt path, or resume=auto with "
            "hydra.run.dir=<the run's directory>."
        )
    return path


# Where the data sits and how it is loaded: the same batches either way (tested), so free to change.
FREE_KEYS = ("data.placement", "data.num_workers", "data.pin_memory")


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...] = RESUME_KEYS
) -> list[str]:
    """``key: saved -> current`` for every leaf under ``keys`` whose value differs."""
    old, new = _flatten(saved, keys), _flatten(current, keys)
    return [
        f"{key}: {_shown(old, key)} -> {_shown(new, key)}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and key not in FREE_KEYS
    ]


def check_resume_config(saved_yaml: str, cfg: DictConfig, strict: bool, path: Path) -> None:
    """Refuse, or warn under ``resume_strict=false``, when the run's settings differ from the checkpoint's.

    Raises:
        UserError: the settings differ and ``strict`` is true.
    """
    saved = parse_stored_config(path, saved_yaml)
    current = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    differences = config_differences(saved, current)
    if not differences:
        return
    if strict:
        raise UserError(
            f"cannot resume from {path}: this run's config differs from the checkpoint's in "
            f"{'; '.join(differences)}; resume with the checkpoint's values, or set resume_strict=false "
            "to resume anyway."
        )
    log.warning(
        "Resuming from %s with a different config (resume_strict=false): %s", path, "; ".join(differences)
    )


def _flatten(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            walk(key, node)
    return flat


def _shown(flat: dict[str, Any], key: str) -> str:
    """A value as the message shows it: repr, so a stored string cannot break the message into lines."""
    return repr(flat[key])[:200] if key in flat else "<unset>"

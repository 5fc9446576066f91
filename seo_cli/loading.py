"""A trained model rebuilt from its checkpoint alone, for ``seo-eval`` and ``seo-predict``.

The checkpoint is untrusted input: its stored config names the model and loss, which are looked up in
``seo_cli.registry`` (never imported by name, never passed to ``instantiate``), and the model is built
first on the meta device, where it allocates nothing, so a config asking for more weights than the file
holds is refused before any memory is spent on it.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.overrides import TorchFunctionMode

from seo_cli.calibration import TemperatureScaled, temperature_problem
from seo_cli.checkpoint import load_checkpoint, parse_stored_config
from seo_cli.config import DataConfig
from seo_cli.data.preprocess import MAX_LENGTH, Preprocessor
from seo_cli.data.spec import Target
from seo_cli.errors import UserError
from seo_cli.metrics import MAX_NDCG_AT, MAX_NDCG_LIST
from seo_cli.registry import allowed_classes, build_from_file, lookup

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16", "fp16")
MAX_WORKERS = 64  # DataLoader workers a checkpoint's data section may ask seo-eval for


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with what it needs to score rows as training did."""

    path: Path
    state: dict[str, Any]
    config: dict[str, Any]  # the training run's resolved config, plain data
    data: DataConfig
    preprocessor: Preprocessor
    targets: list[Target]
    model: torch.nn.Module  # wrapped in TemperatureScaled when the checkpoint holds temperatures
    loss_fn: torch.nn.Module
    fold: tuple[int, int] | None = None  # (k, folds): a model of a cross-validation run, validated on fold k
    temperature: dict[str, float] = field(default_factory=dict)  # per classification target; {}: none

    @property
    def label(self) -> str:
        """``<run dir>/<file>``: tells apart the best.pt files of a sweep."""
        return f"{self.path.parent.parent.name}/{self.path.name}"

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def precision(self) -> str:
        return str(self.config.get("device", {}).get("precision", "32"))


def load_trained(path: Path, device: torch.device, allowed_targets: list[str]) -> TrainedModel:
    """Rebuild model, loss and preprocessing from ``path``.

    Args:
        allowed_targets: the user's own classes (from the command line) the checkpoint may name.

    Raises:
        UserError: a missing, damaged, foreign or tampered checkpoint: one sentence naming the file and
            the field (checked before anything the checkpoint names is built).
    """
    path = Path(path)
    allowed = allowed_classes(allowed_targets)
    state = load_checkpoint(path)
    config = parse_stored_config(path, state["config"])
    where = f"checkpoint {path}"
    pre = Preprocessor.from_state(state["preprocessing"], where)
    targets = [Target(t.name, t.type) for t in pre.targets]
    data = _data_config(path, config)
    if (data.weight_column or "", data.trials_column or "") != (pre.weight_column, pre.trials_column):
        # seo-eval reads the config's columns and encodes the preprocessing's: they must be the same ones.
        raise UserError(
            f"{where}: data.weight_column and data.trials_column of its config are not the columns its preprocessing "
            "weighs by; use a checkpoint written by seo-train."
        )
    device_section = config.get("device", {})
    if not isinstance(device_section, dict) or str(device_section.get("precision", "32")) not in PRECISIONS:
        raise UserError(f"{where}: device.precision of its config must be one of {', '.join(PRECISIONS)}; use a checkpoint written by seo-train.")
    for group in ("model", "loss"):  # both classes the config names are looked up before either is built
        lookup(config[group].get("_target_"), f"{where}: {group}._target_", group, allowed)
    weights = state["model"]
    with _bounded_by(weights, where), torch.device("meta"), _NoFillOnMeta():
        shape_only = build_from_file(
            config["model"], f"{where}: model", "model", allowed, inputs=pre.input_spec, heads=pre.heads
        )
    _check_weights_fit(shape_only, weights, where)
    model = build_from_file(config["model"], f"{where}: model", "model", allowed, inputs=pre.input_spec, heads=pre.heads)
    model.load_state_dict(weights)
    temperature = _temperature(state, pre, where)
    if temperature:
        model = TemperatureScaled(model, temperature, targets[0].name)
    loss_fn = build_from_file(
        config["loss"], f"{where}: loss", "loss", allowed, targets=targets, class_counts=_class_counts(state, pre, where)
    )
    fold = _fold_of(path, config)
    return TrainedModel(
        path, state, config, data, pre, targets, model.to(device), loss_fn.to(device), fold=fold, temperature=temperature
    )


def _temperature(state: dict[str, Any], pre: Preprocessor, where: str) -> dict[str, float]:
    """A calibrated checkpoint's temperatures: one per classification target, each finite and above 0."""
    if "temperature" not in state:
        return {}
    problem = temperature_problem(state["temperature"], list(pre.class_names))
    if problem is not None:
        raise UserError(f"{where}: temperature must be {problem}; calibrate the checkpoint again with seo-eval calibrate=true.")
    return dict(state["temperature"])


def _fold_of(path: Path, config: dict[str, Any]) -> tuple[int, int] | None:
    """``(cv.fold, cv.folds)`` of a cross-validation run's model (whose val split is its fold's), else None."""
    cv = config.get("cv") or {}
    fold, folds = (cv.get("fold"), cv.get("folds")) if isinstance(cv, dict) else (None, None)
    if fold is None:
        return None
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (fold, folds))
    if not whole or not 0 <= fold < folds:
        raise UserError(
            f"checkpoint {path}: cv.fold and cv.folds of its config must be whole numbers with 0 <= cv.fold < "
            "cv.folds; use a checkpoint written by seo-train."
        )
    return fold, folds


def _data_config(path: Path, config: dict[str, Any]) -> DataConfig:
    """The training run's data section, typed by the schema (a field of the wrong type is one sentence)."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(DataConfig), config["data"])
        data = OmegaConf.to_object(node)
    except Exception as err:  # noqa: BLE001 - OmegaConf's validation errors name the field
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"checkpoint {path} has a data section seo-cli cannot use ({reason}); use a checkpoint written by seo-train."
        ) from None
    # seo-eval starts this many DataLoader workers when it streams the rows.
    if not 0 <= data.num_workers <= MAX_WORKERS:
        raise UserError(
            f"checkpoint {path}: data.num_workers of its config must be from 0 to {MAX_WORKERS}; use a checkpoint written by seo-train."
        )
    # Batches are cut to multiples of it: 0 would divide by zero.
    if data.pad_to_multiple_of is not None and not 1 <= data.pad_to_multiple_of <= MAX_LENGTH:
        raise UserError(
            f"checkpoint {path}: data.pad_to_multiple_of of its config must be from 1 to {MAX_LENGTH}; use a checkpoint written by seo-train."
        )
    # seo-eval reports ndcg@k for each k: a long list or a huge k would cost time and memory.
    if not 1 <= len(data.ndcg_at) <= MAX_NDCG_LIST or not all(1 <= k <= MAX_NDCG_AT for k in data.ndcg_at):
        raise UserError(
            f"checkpoint {path}: data.ndcg_at of its config must list 1 to {MAX_NDCG_LIST} cut-offs from 1 to "
            f"{MAX_NDCG_AT}; use a checkpoint written by seo-train."
        )
    # seo-eval reads the training file again: a FIFO or a device (/dev/zero) would block or never end. A
    # directory is Parquet shards, whose regular .parquet files alone are read (seo_cli.data.shards).
    for key in ("path", "test_path", "val_path"):
        named = getattr(data, key)
        plain = os.path.isfile(named) or os.path.isdir(named) if named is not None else True
        if named is not None and ("\0" in named or os.path.exists(named) and not plain):
            raise UserError(
                f"checkpoint {path}: data.{key} of its config names {named}, which is not a regular file; "
                "give the rows with data.path=<file>."
            )
    return data


def _class_counts(state: dict[str, Any], pre: Preprocessor, where: str) -> dict[str, list[int]]:
    """Per classification target, its training class counts: non-negative whole numbers, one per class."""
    counts = state.get("class_counts")
    classes = pre.class_names
    if not isinstance(counts, dict) or set(counts) != set(classes):
        raise UserError(f"{where}: class_counts must name exactly the classification targets {sorted(classes)}.")
    for name, values in counts.items():
        good = isinstance(values, list) and len(values) == len(classes[name])
        if not good or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in values):
            raise UserError(
                f"{where}: class_counts.{name} must be {len(classes[name])} non-negative whole numbers, one per class."
            )
    return counts


class _NoFillOnMeta(TorchFunctionMode):
    """Initialisers that fill a meta tensor do nothing: it has no values to fill, and torch sends
    ``normal_`` on one (an embedding's initialiser) through a first import of torch._dynamo: 1.4 s
    of a 1,000,000-row seo-eval."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        tensor = args[0] if args else (kwargs or {}).get("tensor")  # torch.nn.init passes it by name
        if getattr(func, "__name__", None) in _FILLS and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **(kwargs or {}))


_FILLS = frozenset({"normal_", "uniform_", "fill_", "zero_", "erfinv_"})  # what torch.nn.init calls


class _bounded_by:
    """While a model is built on the meta device: refuse it as soon as it registers more parameters, or
    more elements, than the checkpoint holds weights for (so a stored config asking for a million layers
    stops at the first one too many, in time and memory bounded by the file)."""

    def __init__(self, weights: Any, where: str) -> None:
        if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
            raise UserError(f"{where}: model must be a mapping of parameter names to tensors.")
        self.max_tensors = len(weights)
        self.max_elements = sum(t.numel() for t in weights.values())
        self.where = where

    def __enter__(self) -> "_bounded_by":
        from torch.nn.modules.module import (
            register_module_buffer_registration_hook,
            register_module_parameter_registration_hook,
        )

        self.tensors = self.elements = 0
        self.handles = [
            register_module_parameter_registration_hook(self._count),
            register_module_buffer_registration_hook(self._count),
        ]
        return self

    def _count(self, module: torch.nn.Module, name: str, tensor: Any) -> None:
        if tensor is None:
            return
        self.tensors += 1
        self.elements += tensor.numel()
        if self.tensors > 2 * self.max_tensors + 16 or self.elements > 2 * self.max_elements + 4096:
            raise _TooLarge  # not a UserError: the builder would wrap that in its own sentence

    def __exit__(self, kind: Any, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        if kind is _TooLarge:
            raise UserError(
                f"{self.where}: its config asks for a model far larger than the {self.max_tensors} weight tensors "
                "the file holds; use an unmodified checkpoint written by seo-train."
            ) from None


class _TooLarge(Exception):
    """Raised inside a model's constructor by ``_bounded_by``'s hook."""


def _check_weights_fit(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """The model the config describes has exactly the checkpoint's weight names and shapes."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    stored = {name: tuple(t.shape) for name, t in weights.items()}
    missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has the unexpected weight {str(extra[0])[:100]}"
        raise UserError(f"{where}: its model weights do not fit its own config (it {what}); use an unmodified checkpoint.")
    for name, shape in expected.items():
        if stored[name] != shape:
            raise UserError(
                f"{where}: model weight {name} has shape {list(stored[name])} but its config builds {list(shape)}; "
                "use an unmodified checkpoint."
            )

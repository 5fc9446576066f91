"""The config schema: dataclasses stored in Hydra's ConfigStore and listed first in each primary config.

The schema types every top-level knob and every knob of the trainer, data and device nodes, so
``epochs=ten`` or ``trainer.epoch=3`` fails at once with Hydra's message. Nodes built by ``_target_``
(model, optimizer, scheduler, loss, logger) are typed by their constructor's signature instead:
``seo_cli.validation`` checks them before any data is loaded.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TargetConfig:
    name: str = MISSING
    type: str = MISSING  # classification | regression


@dataclass
class DataConfig:
    source: str = "seo_pages"  # seo_pages (built-in generator) | file (csv, tsv, jsonl or parquet at data.path)
    path: Optional[str] = None
    format: Optional[str] = None  # csv | tsv | jsonl | parquet; null picks by file extension
    num_rows: int = 16000  # seo_pages only
    text_columns: list[str] = field(default_factory=list)
    numeric_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    targets: list[TargetConfig] = field(default_factory=list)
    split_column: Optional[str] = None  # values train / val / test; null splits by the fractions below
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    numeric_scaling: str = "standard"  # standard (z-score) | power (Yeo-Johnson then z-score, for skewed counts)
    max_length: int = 64  # tokens per row after joining the text columns
    vocab_size: int = 4000  # upper bound of the tokenizer's vocabulary, fitted on the training texts


@dataclass
class DeviceConfig:
    type: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    fallback: str = "error"  # error | warn: what to do when the requested device is missing


@dataclass
class TrainerConfig:
    log_every_n_steps: int = 50
    monitor: str = "val/loss"  # metric that picks best.pt, e.g. val/intent/accuracy
    mode: str = "min"  # min | max
    progress: str = "auto"  # auto (rich bars on a terminal, log lines otherwise) | rich | plain


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = field(default_factory=dict)
    loss: Any = MISSING
    logger: Any = field(default_factory=dict)
    task_name: str = "train"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 42
    objective: str = "val/loss"  # what a sweep optimises; the value summary.json and the entrypoint return
    allowed_targets: list[str] = field(default_factory=list)  # extra module prefixes a _target_ may name
    eval_batch_size: int = 1024


@dataclass
class EvalConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    task_name: str = "eval"
    checkpoint: str = MISSING
    split: str = "test"  # train | val | test
    eval_batch_size: int = 1024
    allowed_targets: list[str] = field(default_factory=list)


def register_configs() -> None:
    """Store the schemas; primary configs list them first in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)


def config_dir() -> str:
    """The config tree: ``seo_cli/conf`` in an installed wheel, the top-level ``conf/`` in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return str(installed if installed.is_dir() else package.parent / "conf")

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
    test_path: Optional[str] = None  # a second file whose rows are the test split; data.path then gives train + val
    format: Optional[str] = None  # csv | tsv | jsonl | parquet; null picks by file extension
    column_names: list[str] = field(default_factory=list)  # a CSV/TSV without a header row: its columns, in order
    encoding: str = "utf-8"  # text encoding of CSV, TSV and JSON Lines files, e.g. latin-1, cp1252
    missing: str = "error"  # error | impute: empty numeric inputs get the training median, rows without a target are skipped
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
    placement: str = "auto"  # auto (on the device when it fits) | device | stream (DataLoader from host memory)
    num_workers: int = 2  # DataLoader workers when streaming
    pin_memory: bool = True  # page-locked host batches when streaming to a GPU (faster, asynchronous copies)


@dataclass
class DeviceConfig:
    type: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    fallback: str = "error"  # error | warn: what to do when the requested device is missing
    precision: str = "32"  # 32 | bf16 (autocast, no scaler) | fp16 (autocast with a GradScaler)
    peak_tflops: Optional[float] = None  # the device's peak for MFU; null: known GPUs' data-sheet figure
    strategy: str = "single"  # single | ddp (device=ddp: one process per device, PyTorch DDP)
    num_devices: int = 1  # ddp: processes on this machine, one per GPU (CPU: gloo processes sharing the cores)
    timeout_s: float = 300.0  # ddp: how long a collective waits for a rank before the job fails


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # epochs without improvement before stopping; null turns it off
    monitor: Optional[str] = None  # null: trainer.monitor
    mode: Optional[str] = None  # min | max; null: from the metric (max for accuracy, min for loss)
    min_delta: float = 0.0  # an improvement must beat the best by more than this


@dataclass
class CheckpointConfig:
    save_top_k: int = 0  # keep the k best epochs as epoch=NNN-<monitor>=<value>.pt; -1 keeps every epoch
    every_n_epochs: int = 1  # epochs between those numbered files
    every_n_steps: Optional[int] = None  # also write last.pt every n optimizer steps (mid-epoch resume)
    save_best_only: bool = False  # write best.pt only: no last.pt each epoch (still on SIGTERM/SIGINT)
    max_checkpoints: Optional[int] = None  # with save_top_k=-1: keep only the newest n numbered files


@dataclass
class TrainerConfig:
    log_every_n_steps: int = 50
    monitor: str = "val/loss"  # metric that picks best.pt, e.g. val/intent/accuracy
    mode: str = "min"  # min | max
    progress: str = "auto"  # auto (rich bars on a terminal, log lines otherwise) | rich | plain
    accumulate_grad_batches: int = 1  # batches per optimizer step: the effective batch is batch_size x this
    gradient_clip_val: Optional[float] = None  # null: no clipping
    gradient_clip_algorithm: str = "norm"  # norm (total 2-norm) | value (each element)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    profile: bool = False  # trace optimizer steps 3-5 with torch.profiler into <run dir>/profile (debug=profile)
    cuda_graphs: bool = False  # capture the whole training step in a CUDA graph (static shapes; CUDA only)


@dataclass
class TuningConfig:
    """Set by the Optuna sweeper for each trial (seo_cli/tuning.py), not by hand."""

    storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_id: Optional[int] = None
    pruner: str = "median"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
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
    resume: Optional[str] = None  # auto (latest checkpoint in the run dir given by hydra.run.dir) | a .pt path
    resume_strict: bool = True  # refuse to resume when model, data, loss or optimizer settings differ
    compile: bool = False  # torch.compile the model; checkpoints load with or without it
    deterministic: bool = False  # torch's deterministic algorithms (errors on ops that have none)


@dataclass
class EvalDataConfig:
    path: Optional[str] = None  # a new file to score, with the checkpoint's column mapping; null: its own split
    format: Optional[str] = None  # null: the extension
    column_names: Optional[list[str]] = None  # null: the checkpoint's
    encoding: Optional[str] = None  # null: the checkpoint's


@dataclass
class EvalConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    task_name: str = "eval"
    checkpoint: Any = MISSING  # a .pt file, a list of them, or a run or sweep directory (its best.pt files)
    split: str = "test"  # train | val | test
    eval_batch_size: int = 1024
    allowed_targets: list[str] = field(default_factory=list)
    bootstrap: int = 1000  # resamples of the evaluated rows for confidence intervals; 0 turns them off
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap resamples
    report: bool = True  # PNG plots and report.md next to metrics.json


@dataclass
class PredictConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    task_name: str = "predict"
    checkpoint: str = MISSING
    input: str = MISSING  # CSV, TSV, JSON Lines or Parquet with the checkpoint's input columns
    output: str = MISSING  # .csv, .tsv, .jsonl or .parquet
    id_column: Optional[str] = None  # an input column copied to the output (e.g. url); null: the row number
    strict: bool = False  # true: stop at the first invalid row instead of writing it to the rejects file
    format: Optional[str] = None  # of the input; null: its extension
    column_names: list[str] = field(default_factory=list)  # a header-less input: its columns, in order
    encoding: str = "utf-8"
    batch_size: int = 1024
    allowed_targets: list[str] = field(default_factory=list)


def register_configs() -> None:
    """Store the schemas (primary configs list them first in their defaults) and register the Optuna
    sweeper: Hydra discovers plugins by scanning the ``hydra_plugins`` package, which an editable install
    does not expose to that scan."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.seo_optuna_sweeper.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)


def config_dir() -> str:
    """The config tree: ``seo_cli/conf`` in an installed wheel, the top-level ``conf/`` in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return str(installed if installed.is_dir() else package.parent / "conf")


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that a ``UserError`` the built class raises (a bad
    ``model.num_heads``, a missing optional package) reaches the user as its one sentence, not inside
    Hydra's multi-line InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from seo_cli.errors import UserError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, ValueError | TypeError | ZeroDivisionError | RuntimeError):
            # The class refused a value (torch.optim's "Invalid momentum value: -1", a dropout of 1.5).
            import re

            found = re.search(r"full_key: (\S+)", str(err))
            key = found.group(1) if found else str(node.get("_target_", "a component"))
            reason = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
            raise UserError(f"{key} could not be built ({reason}); change the value it names under {key}.") from None
        raise

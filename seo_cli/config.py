"""The config schema: dataclasses stored in Hydra's ConfigStore and listed first in each primary config.

The schema types every top-level knob and every knob of the trainer, data and device nodes, so
``epochs=ten``, ``trainer.epoch=3`` or ``trainer.mode=sideways`` fails at once with Hydra's message.
Choice-like strings are Enums (Hydra lists the choices). Nodes built by ``_target_`` (model,
optimizer, scheduler, loss, logger) are typed by their constructor's signature instead: ``seo_cli.validation``
checks them, and the constructors their value ranges, before any data is loaded.

The trainer's knobs are listed once, in ``TrainerConfig``: ``seo-train`` passes that node to
``seo_cli.trainer.fit`` and the Python API (``seo_cli.api.ModelTrainer``) takes the same dataclass.
"""

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING


class Choice(str, Enum):
    """A config choice: compares equal to its string and prints as it (``f"{Mode.min}"`` is ``min``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Mode(Choice):
    min = "min"
    max = "max"


class Progress(Choice):
    auto = "auto"  # rich bars on a terminal, plain log lines otherwise
    rich = "rich"
    plain = "plain"


class ClipAlgorithm(Choice):
    norm = "norm"  # scale all gradients so their total 2-norm is at most the value
    value = "value"  # clamp each gradient element


class Source(Choice):
    seo_pages = "seo_pages"  # the built-in generator
    file = "file"  # a CSV, TSV, JSON Lines or Parquet file at data.path (a directory: as parquet_dir)
    parquet_dir = "parquet_dir"  # a directory of Parquet shards at data.path, streamed (larger than memory)


class Missing(Choice):
    error = "error"
    impute = "impute"  # empty numeric inputs get the training median, rows without a target are skipped


class Scaling(Choice):
    standard = "standard"  # z-score
    power = "power"  # Yeo-Johnson, then z-score: for skewed counts


class Padding(Choice):
    longest = "longest"  # each batch cut to its longest row (rounded up to data.pad_to_multiple_of)
    max_length = "max_length"  # every batch data.max_length wide


class Placement(Choice):
    auto = "auto"  # on the device when it fits
    device = "device"
    stream = "stream"  # a DataLoader from host memory


class SplitBy(Choice):
    random = "random"  # seeded random rows, stratified on the first classification target
    group = "group"  # whole groups of data.group_column: no group in two splits (stratified where possible)
    time = "time"  # by data.time_column: train on the earliest rows, validate on the next, test on the latest


class TaskType(Choice):
    classification = "classification"
    regression = "regression"
    multilabel = "multilabel"  # several labels per row, joined by data.label_separator ("news|local")
    rate = "rate"  # the column holds successes (clicks) out of data.trials_column (impressions)
    ranking = "ranking"  # graded relevance (integer >= 0), ordered within each data.group_column value


class Sampler(Choice):
    random = "random"  # every training row once per epoch, in a seeded random order
    balanced = "balanced"  # rows drawn with replacement so each class of the first classification target is equally likely


class DeviceType(Choice):
    auto = "auto"  # cuda, then mps, then cpu
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Fallback(Choice):
    error = "error"
    warn = "warn"  # run on the CPU with a warning


class Strategy(Choice):
    single = "single"
    ddp = "ddp"  # one process per device, PyTorch DDP


class Split(Choice):
    train = "train"
    val = "val"
    test = "test"


@dataclass
class TargetConfig:
    name: str = MISSING
    type: TaskType = MISSING


@dataclass
class DataConfig:
    source: Source = Source.seo_pages
    path: Optional[str] = None
    test_path: Optional[str] = None  # a second file whose rows are the test split; data.path then gives train + val
    val_path: Optional[str] = None  # parquet_dir: a directory of validation shards (with data.test_path, a directory)
    format: Optional[str] = None  # csv | tsv | jsonl | parquet; null picks by file extension
    column_names: list[str] = field(default_factory=list)  # a CSV/TSV without a header row: its columns, in order
    encoding: str = "utf-8"  # text encoding of CSV, TSV and JSON Lines files, e.g. latin-1, cp1252
    missing: Missing = Missing.error
    num_rows: int = 16000  # seo_pages only
    text_columns: list[str] = field(default_factory=list)
    numeric_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    targets: list[TargetConfig] = field(default_factory=list)
    split_column: Optional[str] = None  # values train / val / test; null splits by the fractions below
    split_by: SplitBy = SplitBy.random  # how the fractions below split the rows (without data.split_column)
    group_column: Optional[str] = None  # the group of a row, e.g. the query or the site (split_by=group, ranking targets)
    time_column: Optional[str] = None  # a date or a number ordering the rows in time (split_by=time)
    label_separator: str = "|"  # between the labels of a multilabel target's cell: "news|local"
    weight_column: Optional[str] = None  # non-negative row weights of the losses and the metrics; null: every row 1
    trials_column: Optional[str] = None  # type: rate targets: the trials (impressions) their successes (clicks) are out of
    sampler: Sampler = Sampler.random  # balanced: class-balanced draws of training rows (first classification target)
    ndcg_at: list[int] = field(default_factory=lambda: [1, 3, 10])  # ranking targets: the k of <split>/<target>/ndcg@k
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    numeric_scaling: Scaling = Scaling.standard
    max_length: Optional[int] = 64  # tokens per row after joining the text columns; null: from the data
    padding: Padding = Padding.longest
    pad_to_multiple_of: Optional[int] = None  # padding=longest: round a batch's length up to it; null: 1, 32 under compile
    bucket_by_length: bool = False  # training batches group rows of similar length (less padding still)
    vocab_size: int = 4000  # upper bound of the tokenizer's vocabulary, fitted on the training texts
    tokenizer: Optional[str] = None  # a pretrained model's directory or Hub id: its tokenizer instead (model=pretrained sets it)
    max_classes: int = 1000  # a classification target with more classes is refused before training
    placement: Placement = Placement.auto
    num_workers: int = 2  # DataLoader workers when streaming
    pin_memory: bool = True  # page-locked host batches when streaming to a GPU (faster, asynchronous copies)
    fit_sample_rows: int = 200_000  # parquet_dir: training rows (a seeded sample) the preprocessing is fitted on
    shuffle_buffer: int = 65_536  # parquet_dir: rows shuffled together within each worker's stream


@dataclass
class DeviceConfig:
    type: DeviceType = DeviceType.auto
    fallback: Fallback = Fallback.error  # what to do when the requested device is missing
    precision: str = "32"  # 32 | bf16 (autocast, no scaler) | fp16 (autocast with a GradScaler)
    peak_tflops: Optional[float] = None  # the device's peak for MFU; null: known GPUs' data-sheet figure
    strategy: Strategy = Strategy.single
    num_devices: int = 1  # ddp: processes on this machine, one per GPU (CPU: gloo processes sharing the cores)
    timeout_s: float = 300.0  # ddp: how long a collective waits for a rank before the job fails


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # epochs without improvement before stopping; null turns it off
    monitor: Optional[str] = None  # null: trainer.monitor
    mode: Optional[Mode] = None  # null: from the metric (max for accuracy, min for loss)
    min_delta: float = 0.0  # an improvement must beat the best by more than this


@dataclass
class CheckpointConfig:
    save_top_k: int = 0  # keep the k best epochs as epoch=NNN-<monitor>=<value>.pt; -1 keeps every epoch
    every_n_epochs: int = 1  # epochs between those numbered files
    every_n_steps: Optional[int] = None  # also write last.pt every n optimizer steps (mid-epoch resume)
    save_best_only: bool = False  # write best.pt only: no last.pt each epoch (still on SIGTERM/SIGINT)
    max_checkpoints: Optional[int] = None  # with save_top_k=-1: keep only the newest n numbered files


@dataclass
class EmaConfig:
    decay: Optional[float] = None  # exponential moving average of the weights, e.g. 0.999; null: off


@dataclass
class TrainerConfig:
    """The training loop's knobs (``seo_cli.trainer.fit``). In ``seo-train`` the first three follow the
    top-level ``epochs``, ``device.precision`` and ``seed``."""

    epochs: int = 10
    precision: str = "32"  # 32 | bf16 | fp16
    seed: int = 0  # re-seeds the ranks of a DDP run resumed on a different number of processes
    log_every_n_steps: int = 50
    val_check_interval: Optional[int] = None  # also validate every n optimizer steps inside an epoch
    monitor: str = "val/loss"  # metric that picks best.pt, e.g. val/intent/accuracy
    mode: Mode = Mode.min
    progress: Progress = Progress.auto
    accumulate_grad_batches: int = 1  # batches per optimizer step: the effective batch is batch_size x this
    gradient_clip_val: Optional[float] = None  # null: no clipping
    gradient_clip_algorithm: ClipAlgorithm = ClipAlgorithm.norm
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    overfit_batches: int = 0  # >0: train and validate on these first training batches only (debug=overfit)
    profile: bool = False  # trace optimizer steps 3-5 with torch.profiler into <run dir>/profile (debug=profile)
    cuda_graphs: bool = False  # capture the whole training step in a CUDA graph per batch shape (CUDA only)


@dataclass
class TuningConfig:
    """Set by the Optuna sweeper for each trial (seo_cli/tuning.py), not by hand."""

    storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_id: Optional[int] = None
    pruner: str = "median"


@dataclass
class CvConfig:
    """k-fold cross-validation: ``cv.folds=5`` trains five models in ``fold_<k>/`` of the run directory,
    each validated on another fifth of the train and val rows; the test split stays held out."""

    folds: Optional[int] = None  # null or 0: off; 2 or more: the number of folds
    fold: Optional[int] = None  # the fold a model of a cross-validation run trains on (0-based), set by the run


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    cv: CvConfig = field(default_factory=CvConfig)
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
    warmup_steps: int = 0  # linear warm-up of scheduler=warmup_cosine, in optimizer steps
    seed: int = 42
    objective: str = "val/loss"  # what a sweep optimises; the value summary.json and the entrypoint return
    allowed_targets: list[str] = field(default_factory=list)  # classes of your own a _target_ may name, exactly
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
    split: Split = Split.test
    eval_batch_size: int = 1024
    allowed_targets: list[str] = field(default_factory=list)
    bootstrap: int = 1000  # resamples of the evaluated rows for confidence intervals; 0 turns them off
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap resamples
    report: bool = True  # PNG plots and report.md next to metrics.json
    calibration_bins: int = 15  # equal-width bins of the expected calibration error (ece) and the reliability diagram
    calibrate: bool = False  # fit a temperature per classification target on the val split; write calibrated.pt


class Backend(Choice):
    torch = "torch"  # a checkpoint, with PyTorch on device
    onnx = "onnx"  # an export of seo-export, with onnxruntime on the CPU; torch is not imported


class ExportFormat(Choice):
    onnx = "onnx"


@dataclass
class PredictConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    task_name: str = "predict"
    backend: Backend = Backend.torch
    checkpoint: Optional[str] = None  # backend=torch: the .pt file
    onnx_file: Optional[str] = None  # backend=onnx: the .onnx file seo-export wrote (model= on the command line)
    sidecar: Optional[str] = None  # backend=onnx: its JSON sidecar; null: the model's path ending in .json
    input: str = MISSING  # CSV, TSV, JSON Lines or Parquet with the checkpoint's input columns
    output: str = MISSING  # .csv, .tsv, .jsonl or .parquet
    id_column: Optional[str] = None  # an input column copied to the output (e.g. url); null: the row number
    strict: bool = False  # true: stop at the first invalid row instead of writing it to the rejects file
    format: Optional[str] = None  # of the input; null: its extension
    column_names: list[str] = field(default_factory=list)  # a header-less input: its columns, in order
    encoding: str = "utf-8"
    batch_size: int = 1024
    allowed_targets: list[str] = field(default_factory=list)


@dataclass
class ExportConfig:
    task_name: str = "export"
    checkpoint: str = MISSING  # the .pt file to export
    format: ExportFormat = ExportFormat.onnx
    output: str = MISSING  # model.onnx; its sidecar is written next to it as model.json
    input: Optional[str] = None  # rows to check the export on; null: the checkpoint's own validation split
    input_format: Optional[str] = None  # of input; null: its extension
    encoding: str = "utf-8"  # of input
    parity_rows: int = 2000  # rows of the check, at most (the first of the split or file)
    tolerance: float = 1e-4  # largest absolute difference allowed on logits and standardised regression outputs
    min_class_agreement: float = 0.999  # share of rows whose predicted class must be the same
    quantize: bool = False  # dynamic int8 weights (onnxruntime.quantization); its change is reported, not refused
    opset: int = 18  # ONNX operator set of the export
    batch_size: int = 1024
    allowed_targets: list[str] = field(default_factory=list)


def register_configs() -> None:
    """Store the schemas (primary configs list them first in their defaults) and register the Optuna
    sweeper and the submitit launchers: Hydra discovers plugins by scanning the ``hydra_plugins`` package,
    which an editable install does not expose to that scan. Called once, by ``seo_cli.cli`` (and by tests
    that compose configs)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    plugins = Plugins.instance()  # the scan: installed plugins (hydra-submitit-launcher) store their configs
    from hydra_plugins.seo_optuna_sweeper.optuna_sweeper import OptunaSweeper
    from hydra_plugins.seo_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

    for plugin in (OptunaSweeper, SlurmLauncher, LocalLauncher):
        plugins.register(plugin)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="export_schema", node=ExportConfig)
    # hydra-submitit-launcher stores its typed launcher configs as hydra/launcher/submitit_slurm and
    # submitit_local, the names of our conf/hydra/launcher files, and Hydra would validate each file against
    # the stored config of its name (deprecated in Hydra 1.1, with a warning at every start). They move to
    # <name>_schema, which the files extend (an empty one without the plugin: its launcher says to install it).
    launchers = cs.repo.get("hydra", {}).get("launcher", {})
    for name in ("submitit_slurm", "submitit_local"):
        stored = launchers.pop(f"{name}.yaml", None)
        if stored is not None or f"{name}_schema.yaml" not in launchers:  # moved already by an earlier call
            cs.store(group="hydra/launcher", name=f"{name}_schema", node=stored.node if stored else {})
    OmegaConf.register_new_resolver("seo.gpus_per_node", gpus_per_node, replace=True)


def gpus_per_node(device_type: str, num_devices: int) -> int:
    """``${seo.gpus_per_node:${device.type},${device.num_devices}}``: the GPUs a cluster job of this device
    config asks for on each node: none for ``device.type=cpu``, else one per device."""
    return 0 if str(device_type) == DeviceType.cpu else int(num_devices)


def config_dir() -> str:
    """The config tree: ``seo_cli/conf`` in an installed wheel, the top-level ``conf/`` in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return str(installed if installed.is_dir() else package.parent / "conf")

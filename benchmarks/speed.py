"""Training speed of seo-train's loop against plain PyTorch and Lightning: the same model, data, precision
and optimizer through four loops, in this one process, on one device.

    python benchmarks/speed.py                                  # everything, on the GPU if there is one
    python benchmarks/speed.py --workloads w1 --runners a b d   # a subset
    python benchmarks/speed.py --quick                          # tiny sizes: about a minute on a 2-core CPU
    python benchmarks/speed.py --workloads w1 --repeats 3       # a noisy machine: medians of 3 rounds

Runners (only the loop differs: every one trains the same ``seo_cli`` model class with the same
``MultiTargetLoss`` and AdamW with lr 1e-3 and weight decay 0.01, no scheduler; (a)-(c) start from the
same initial weights, (d) from those of ``seed=42``):

- (a) ``minimal``: a hand-written loop over ``DataLoader(TensorDataset, shuffle=True)``, default AdamW,
  no ``.item()`` per step.
- (b) ``hand-tuned``: the data resident on the device, batches by ``torch.randperm`` index,
  ``AdamW(fused=True)`` (on the CPU too: there its step is about 3x faster than ``foreach=True`` on W1's MLP),
  no sync in the step; W2 also ``b+compile``.
- (c) ``lightning``: ``lightning.Trainer`` (or ``pytorch_lightning``) over the loader of (a), progress bar,
  logger, checkpointing and model summary off; skipped with a note when Lightning is not installed
  (``pip install lightning``: it is not a dependency of seo-cli).
- (d) ``seo-cli``: ``seo_cli.train.train`` on a config composed as ``seo-train`` composes it, with its
  defaults on (TensorBoard logger, ``metrics.jsonl``, log lines every 50 steps, validation and
  ``last.pt`` / ``best.pt`` after every epoch), reading the same rows from a Parquet file
  (``data=csv data.split_column=split``, so its training split has exactly the rows (a)-(c) train on);
  variants ``d+cuda_graphs`` (``trainer.cuda_graphs=true``) and, for W2, ``d+compile``
  (``compile=true``) and ``d+compile+cuda_graphs`` (both: the compiled model inside the captured step). A variant whose override does not compose, or that seo-train refuses (CUDA
  graphs on the CPU), is skipped with the reason.

What is measured: the training throughput of the last epoch (epoch 2 of 2; epoch 1 holds warm-up,
allocator growth and compilation). For (a)-(c) it is the time between a device sync before the
epoch's first batch and one after its last step; for (d) it is the trainer's own figure for that
epoch (``speed/samples_per_second`` of the epoch row in ``metrics.jsonl``: from the epoch's first
batch to the sync after its last step, log lines and TensorBoard writes included, validation and
checkpointing not). Steps/s is the epoch's steps (the last one short) over that time. (d) is also
reported whole: epoch 2 from the end of epoch 1's checkpoint write to the end of epoch 2's, so
validation, the epoch's logging and the checkpoint files are in it. ``--repeats N`` runs the
variants in N interleaved rounds and reports each one's median run (all N values are in the JSON).

Workloads (fixed, so results compare across versions):

- W1 tabular: MLP 64 -> 256 -> 256 -> 256 (ReLU, no dropout), heads for four regression targets
  (one output each: ``OutputHeads`` keeps one layer per target) and a 2-class target, MSE + cross
  entropy; 200,000 random training rows, batch 256 (782 steps an epoch), fp32. Reports steps/s.
- W2 text: transformer encoder classifier (``seo_cli.models.transformer``), vocabulary 32,000,
  width 512, 8 layers, 8 heads, feed-forward 2,048, no dropout, sequence 256, batch 64, 16,384
  random training sequences, 4 classes, bf16 autocast. Reports tokens/s and MFU: tokens/s x
  (6 x non-embedding parameters + 12 x layers x width x sequence) FLOPs per token over the GPU's
  dense bf16 peak (a table by device name; ``--peak-tflops`` overrides it). (a)-(c) draw token ids
  uniformly from 1..31,999 (0 is padding); (d) reads random words, which its own BPE tokenizer,
  trained with ``data.vocab_size=32000``, cuts into at least 320 tokens per row, truncated to
  ``data.max_length=256``: the same shapes, no padding (both checked and reported from the run).
- W3 start-up: wall time of ``seo-train --help`` (best of 3) and ``seo-train debug=smoke`` (also
  with ``logger=none``) as subprocesses.

Targets (reported as pass / miss, or n/a where this run cannot tell): W1 on a GPU, (d) at least
2x (c)'s steps/s and ``d+cuda_graphs`` at least 2,000 steps/s; W2 on a GPU, ``d+compile`` at least
1.6x (c)'s tokens/s and at least 30% MFU, ``d+compile+cuda_graphs`` at least 2.3x (c)'s tokens/s and
at least 28% MFU (issue 19; W1's (d) at least 3x (c)); W1 on the CPU, (d) at least 1.8x (a) (``d+foreach``: the
same run with ``optimizer.fused=false``, the default before fused became the CPU's too); W3 ``--help``
under 2 s and ``debug=smoke`` under 15 s (for a 2-core CPU). ``--quick`` sizes are not the fixed
workloads, so only W3 is judged there.

Prints a table per workload and writes ``benchmarks/results/speed.json`` (device, versions, every
runner's figures, the targets). CPU timings are only as good as the machine is idle: the load
average is recorded.
"""

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from machine import git_revision
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import seo_cli
from seo_cli.checkpoint import CheckpointManager, load_checkpoint
from seo_cli.config import config_dir, register_configs
from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, REGRESSION, InputSpec, Target
from seo_cli.errors import UserError
from seo_cli.losses import MultiTargetLoss
from seo_cli.models.mlp import MLP
from seo_cli.models.transformer import Transformer
from seo_cli.runtime import peak_flops as runtime_peak_flops
from seo_cli.train import train
from seo_cli.trainer import TrainingInterrupted

log = logging.getLogger("speed")

RESULTS = Path(__file__).parent / "results" / "speed.json"


@dataclass(frozen=True)
class Tabular:
    """W1: an MLP on random numeric rows, four regression targets and one 2-class target."""

    rows: int = 200_000  # training rows; val and test get held_out rows each
    held_out: int = 10_000
    features: int = 64
    hidden: tuple[int, ...] = (256, 256, 256)
    regression_targets: int = 4
    classes: int = 2
    batch_size: int = 256
    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    precision: str = "32"

    @property
    def targets(self) -> list[Target]:
        regression = [Target(f"r{i}", REGRESSION) for i in range(self.regression_targets)]
        return [*regression, Target("c", CLASSIFICATION)]

    @property
    def heads(self) -> dict[str, int]:
        return {t.name: 1 if t.type == REGRESSION else self.classes for t in self.targets}

    @property
    def tokens_per_row(self) -> int | None:
        return None


@dataclass(frozen=True)
class Text:
    """W2: a transformer encoder classifier on random sequences of a fixed length, 4 classes."""

    rows: int = 16_384
    held_out: int = 1_024
    vocab: int = 32_000
    width: int = 512
    layers: int = 8
    heads_: int = 8
    ffn: int = 2_048
    seq: int = 256
    classes: int = 4
    batch_size: int = 64
    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    precision: str = "bf16"

    @property
    def targets(self) -> list[Target]:
        return [Target("c", CLASSIFICATION)]

    @property
    def heads(self) -> dict[str, int]:
        return {"c": self.classes}

    @property
    def tokens_per_row(self) -> int | None:
        return self.seq


WORKLOADS: dict[str, Tabular | Text] = {"w1": Tabular(), "w2": Text()}
QUICK: dict[str, Tabular | Text] = {
    "w1": Tabular(rows=8_192, held_out=512, hidden=(64, 64)),
    "w2": Text(
        rows=512, held_out=64, vocab=1_000, width=64, layers=2, heads_=4, ffn=128, seq=32, batch_size=32
    ),
}


@dataclass(frozen=True)
class Variant:
    """One row of a workload's table: a runner (a, b, c, d) and its options."""

    name: str
    runner: str
    compile: bool = False  # b: torch.compile the model
    overrides: tuple[str, ...] = ()  # d: extra seo-train overrides


VARIANTS: dict[str, list[Variant]] = {
    "w1": [
        Variant("a", "a"),
        Variant("b", "b"),
        Variant("c", "c"),
        Variant("d", "d"),
        # The optimizer kernel before fused became the CPU's default too (issue 19): the same run, foreach.
        Variant("d+foreach", "d", overrides=("optimizer.fused=false",)),
        Variant("d+cuda_graphs", "d", overrides=("trainer.cuda_graphs=true",)),
    ],
    "w2": [
        Variant("a", "a"),
        Variant("b", "b"),
        Variant("b+compile", "b", compile=True),
        Variant("c", "c"),
        Variant("d", "d"),
        Variant("d+compile", "d", overrides=("compile=true",)),
        Variant("d+cuda_graphs", "d", overrides=("trainer.cuda_graphs=true",)),
        # The compiled model inside the captured step (issue 19): compile's fusion and the graph's one launch.
        Variant("d+compile+cuda_graphs", "d", overrides=("compile=true", "trainer.cuda_graphs=true")),
    ],
}
RUNNER_NAMES = {"a": "minimal loop", "b": "hand-tuned", "c": "Lightning", "d": "seo-cli"}

# W3: seo-train arguments, how many runs (the best counts), and whether --quick runs it.
STARTUP_COMMANDS = {
    "help": (["--help"], 3, True),
    "smoke": (["debug=smoke"], 1, True),
    "smoke_logger_none": (["debug=smoke", "logger=none"], 1, False),
}


@dataclass
class TrainData:
    """The training rows as (a)-(c) see them, and the file (d) reads them (and val/test rows) from."""

    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]
    path: Path
    overrides: list[str] = field(default_factory=list)  # the data and model part of (d)'s config

    @property
    def names(self) -> list[str]:
        return [*self.inputs, *self.targets]

    def split(self, tensors: list[Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(inputs, targets) dicts from tensors in the order of ``names``."""
        batch = dict(zip(self.names, tensors, strict=True))
        return {k: batch[k] for k in self.inputs}, {k: batch[k] for k in self.targets}


def split_column(work: Tabular | Text) -> np.ndarray:
    return np.repeat(np.array(["train", "val", "test"]), [work.rows, work.held_out, work.held_out])


def tabular_data(work: Tabular, directory: Path, rng: np.random.Generator) -> TrainData:
    total = work.rows + 2 * work.held_out
    x = rng.standard_normal((total, work.features), dtype=np.float32)
    y = rng.standard_normal((total, work.regression_targets), dtype=np.float32)
    c = rng.integers(0, work.classes, total)
    features = [f"f{i}" for i in range(work.features)]
    columns = {name: x[:, i] for i, name in enumerate(features)}
    columns |= {f"r{i}": y[:, i] for i in range(work.regression_targets)}
    path = directory / "w1.parquet"
    pd.DataFrame({**columns, "c": c, "split": split_column(work)}).to_parquet(path)
    targets = ",".join(f"{{name:{t.name},type:{t.type}}}" for t in work.targets)
    overrides = [
        f"data.numeric_columns=[{','.join(features)}]",
        f"data.targets=[{targets}]",
        "model=mlp",
        f"model.hidden_sizes=[{','.join(map(str, work.hidden))}]",
        "model.dropout=0",
        "model.activation=relu",
    ]
    n = work.rows
    return TrainData(
        inputs={"numeric": torch.from_numpy(x[:n])},
        targets={f"r{i}": torch.from_numpy(y[:n, i].copy()) for i in range(work.regression_targets)}
        | {"c": torch.from_numpy(c[:n])},
        path=path,
        overrides=overrides,
    )


def text_data(work: Text, directory: Path, rng: np.random.Generator) -> TrainData:
    total = work.rows + 2 * work.held_out
    # Twice as many distinct words as vocabulary slots, each seen ~100 times: BPE finds more merges
    # than it has room for, so the vocabulary fills to exactly data.vocab_size.
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, n)) for n in rng.integers(4, 10, 2 * work.vocab)]
    # Every word is at least one token: 5/4 x seq words truncate to exactly seq tokens, no padding.
    picks = rng.integers(0, len(lexicon), (total, work.seq + work.seq // 4)).tolist()
    text = [" ".join(lexicon[i] for i in row) for row in picks]
    c = rng.integers(0, work.classes, total)
    path = directory / "w2.parquet"
    pd.DataFrame({"text": text, "c": c, "split": split_column(work)}).to_parquet(path)
    overrides = [
        "data.text_columns=[text]",
        "data.targets=[{name:c,type:classification}]",
        f"data.max_length={work.seq}",
        f"data.vocab_size={work.vocab}",
        "model=transformer",
        f"model.d_model={work.width}",
        f"model.num_layers={work.layers}",
        f"model.num_heads={work.heads_}",
        f"model.ffn_dim={work.ffn}",
        "model.dropout=0",
    ]
    tokens = rng.integers(1, work.vocab, (work.rows, work.seq))  # 0 is the padding id
    return TrainData(
        inputs={"tokens": torch.from_numpy(tokens)},
        targets={"c": torch.from_numpy(c[: work.rows])},
        path=path,
        overrides=overrides,
    )


def build_model(work: Tabular | Text, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The model and loss every runner trains, from the same seed (so the same initial weights)."""
    torch.manual_seed(0)
    if isinstance(work, Tabular):
        spec = InputSpec(num_numeric=work.features)
        model = MLP(spec, work.heads, hidden_sizes=list(work.hidden), dropout=0.0, activation="relu")
    else:
        spec = InputSpec(vocab_size=work.vocab, max_length=work.seq, pad_id=0)
        model = Transformer(
            spec,
            work.heads,
            d_model=work.width,
            num_layers=work.layers,
            num_heads=work.heads_,
            ffn_dim=work.ffn,
            dropout=0.0,
        )
    counts = {t.name: [1] * work.heads[t.name] for t in work.targets if t.type == CLASSIFICATION}
    loss_fn = MultiTargetLoss(work.targets, class_counts=counts)
    return model.to(device), loss_fn.to(device)


def flops_per_token(work: Text) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + 12 x layers x width x sequence."""
    model, _ = build_model(work, torch.device("cpu"))
    encoder = model.encoder
    embedding = encoder.token_embedding.weight.numel() + encoder.position_embedding.weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    return 6 * non_embedding + 12 * work.layers * work.width * work.seq


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The dense bf16 peak: seo-train's own data-sheet table (``speed/mfu`` uses it), or the override."""
    return runtime_peak_flops(device, "bf16", override_tflops)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def timed_epochs(run_epoch: Callable[[], Tensor], work: Tabular | Text, device: torch.device) -> dict:
    """Run ``work.epochs`` epochs, each between two device syncs; the figures of the last one."""
    seconds, loss = [], None
    for _ in range(work.epochs):
        synchronize(device)
        start = time.perf_counter()
        loss = run_epoch()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return throughput(work, seconds) | {"last_loss": loss.item()}


def throughput(work: Tabular | Text, seconds: list[float]) -> dict:
    steps = -(-work.rows // work.batch_size)
    figures = {
        "epoch_seconds": seconds,
        "steps_per_second": steps / seconds[-1],
        "samples_per_second": work.rows / seconds[-1],
    }
    if work.tokens_per_row:
        figures["tokens_per_second"] = work.rows * work.tokens_per_row / seconds[-1]
    return figures


def run_minimal(work: Tabular | Text, data: TrainData, device: torch.device, variant: Variant) -> dict:
    """(a): what a first hand-written loop looks like."""
    model, loss_fn = build_model(work, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=work.lr, weight_decay=work.weight_decay)
    loader = DataLoader(
        TensorDataset(*data.inputs.values(), *data.targets.values()), batch_size=work.batch_size, shuffle=True
    )

    def run_epoch() -> Tensor:
        model.train()
        for tensors in loader:
            inputs, targets = data.split([t.to(device) for t in tensors])
            with autocast(device, work.precision):
                loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return loss

    return timed_epochs(run_epoch, work, device)


def run_tuned(work: Tabular | Text, data: TrainData, device: torch.device, variant: Variant) -> dict:
    """(b): the data on the device, batches by index, a fused optimizer, nothing that syncs in the step."""
    model, loss_fn = build_model(work, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=work.lr, weight_decay=work.weight_decay, fused=True)
    forward = torch.compile(model) if variant.compile else model
    inputs = {k: v.to(device) for k, v in data.inputs.items()}
    targets = {k: v.to(device) for k, v in data.targets.items()}

    def run_epoch() -> Tensor:
        model.train()
        for index in torch.randperm(work.rows, device=device).split(work.batch_size):
            x = {k: v[index] for k, v in inputs.items()}
            y = {k: v[index] for k, v in targets.items()}
            with autocast(device, work.precision):
                loss = loss_fn(forward(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss

    return timed_epochs(run_epoch, work, device)


def lightning_module() -> Any:
    """``lightning`` (or the older ``pytorch_lightning`` package); None when neither is installed."""
    for name in ("lightning", "pytorch_lightning"):
        with contextlib.suppress(ImportError):
            return __import__(name)
    return None


def run_lightning(work: Tabular | Text, data: TrainData, device: torch.device, variant: Variant) -> dict:
    """(c): Lightning's Trainer with its extras off, over the loader of (a)."""
    L = lightning_module()
    if L is None:
        return {"skipped": "Lightning is not installed (pip install lightning)"}
    model, loss_fn = build_model(work, device)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
            inputs, targets = data.split(batch)
            return self.loss_fn(self.model(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=work.lr, weight_decay=work.weight_decay)

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            synchronize(device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            synchronize(device)
            self.seconds.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=work.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if work.precision == "bf16" else "32-true",
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = DataLoader(
        TensorDataset(*data.inputs.values(), *data.targets.values()), batch_size=work.batch_size, shuffle=True
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(Module(), train_dataloaders=loader)
    return throughput(work, timer.seconds) | {"version": L.__version__}


def seo_train_overrides(work: Tabular | Text, data: TrainData) -> list[str]:
    """The seo-train overrides of a workload: its file, model, batch, epochs and optimizer (no device)."""
    return [
        "data=csv",
        f"data.path={data.path}",
        "data.split_column=split",
        *data.overrides,
        f"batch_size={work.batch_size}",
        f"epochs={work.epochs}",
        "optimizer=adamw",
        f"learning_rate={work.lr}",
        f"weight_decay={work.weight_decay}",
        "scheduler=none",
        # Log lines, not rich bars: the same work whether or not stdout is a terminal.
        "trainer.progress=plain",
    ]


def run_ours(work: Tabular | Text, data: TrainData, device: torch.device, variant: Variant) -> dict:
    """(d): seo-train's ``train`` on the composed config, as the command runs it (not a subprocess)."""
    overrides = [
        *seo_train_overrides(work, data),
        f"device.type={device.type}",
        f"device.precision={work.precision}",
        *variant.overrides,
    ]
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - Hydra raises several types; the message says which key
        reason = str(err.__cause__).splitlines()[0] if err.__cause__ else first_line(err)
        return {"skipped": f"{' '.join(variant.overrides)} does not compose: {reason}"}
    # Its own directory, whatever the name: a repeated variant must not append to an earlier run's files.
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{variant.name}-", dir=data.path.parent))
    # When each epoch's checkpoints are written: the whole epoch is the time between two of them.
    written: list[float] = []
    save_epoch = CheckpointManager.save_epoch

    def timed_save_epoch(self: CheckpointManager, *args: Any, **kwargs: Any) -> Any:
        paths = save_epoch(self, *args, **kwargs)
        written.append(time.perf_counter())
        return paths

    try:
        with mock.patch.object(CheckpointManager, "save_epoch", timed_save_epoch):
            summary = train(cfg, run_dir)
    except UserError as err:
        return {"skipped": f"{' '.join(variant.overrides) or 'seo-train'} refused: {first_line(err)}"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "epoch" in row]
    steps = -(-work.rows // work.batch_size)
    if summary["global_step"] != steps * work.epochs:
        raise RuntimeError(
            f"seo-train took {summary['global_step']} steps, not {steps * work.epochs}: its training split "
            "is not the rows the other runners train on."
        )
    figures = throughput(work, [work.rows / row["speed/samples_per_second"] for row in epochs])
    whole = written[-1] - written[-2]
    figures |= {
        "whole_epoch_seconds": whole,
        "whole_epoch_steps_per_second": steps / whole,
        "last_loss": epochs[-1]["train/loss"],
        "wall_time_s": summary["wall_time_s"],
        "overrides": overrides,
    }
    if isinstance(work, Text):
        figures |= text_shapes(run_dir, data.path, work)
    shutil.rmtree(run_dir)  # W2's checkpoints are about 0.5 GB each, two an epoch
    return figures


def text_shapes(run_dir: Path, path: Path, work: Text) -> dict:
    """The vocabulary and sequence length (d) trained with, and the padding share of its token ids."""
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    vocab, _ = state["model"]["encoder.token_embedding.weight"].shape
    positions, _ = state["model"]["encoder.position_embedding.weight"].shape
    sample = pd.read_parquet(path).head(512)
    tokens = Preprocessor.from_state(state["preprocessing"]).transform_inputs(sample)["tokens"]
    padding = float((tokens == 0).float().mean())
    note = f"vocab {vocab:,}, sequence {tokens.shape[1]}, padding {padding:.1%}"
    if (vocab, positions) != (work.vocab, work.seq) or padding:
        note += f" (the others: vocab {work.vocab:,}, sequence {work.seq}, no padding)"
    return {"vocab": vocab, "sequence": int(tokens.shape[1]), "padding_share": padding, "shape_note": note}


RUNNERS: dict[str, Callable[[Tabular | Text, TrainData, torch.device, Variant], dict]] = {
    "a": run_minimal,
    "b": run_tuned,
    "c": run_lightning,
    "d": run_ours,
}


def first_line(err: BaseException) -> str:
    """The error's message on one line (Hydra puts the key on the first and the reason on the second)."""
    lines = str(err).strip().splitlines()
    return " ".join(line.strip() for line in lines[:2])[:240] if lines else type(err).__name__


def run_variant(work: Tabular | Text, data: TrainData, device: torch.device, variant: Variant) -> dict:
    """One runner once: its figures, or ``skipped`` / ``failed`` with the reason."""
    started = time.perf_counter()
    try:
        figures = RUNNERS[variant.runner](work, data, device, variant)
        # Set-up, both epochs and (d)'s data preparation and test: what the runner costs to run.
        figures["runner_seconds"] = time.perf_counter() - started
    except TrainingInterrupted:
        raise  # SIGTERM or Ctrl-C reached seo-train's loop: stop the benchmark, not just this runner
    except Exception as err:  # noqa: BLE001 - one failing runner must not lose the others' figures
        log.error("%s failed:\n%s", variant.name, traceback.format_exc())
        figures = {"failed": f"{type(err).__name__}: {first_line(err)}"}
    finally:
        if variant.compile or "compile=true" in variant.overrides:
            torch._dynamo.reset()  # the next runner starts without this one's compiled graphs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "skipped" in figures:
        log.warning("%s skipped: %s", variant.name, figures["skipped"])
    return figures


def run_workload(
    name: str,
    work: Tabular | Text,
    runners: list[str],
    device: torch.device,
    directory: Path,
    repeats: int = 1,
) -> dict[str, dict]:
    """Every selected variant ``repeats`` times, in interleaved rounds (a b c d, a b c d, ...) so that a
    machine that speeds up or slows down affects all alike; each variant's median run."""
    log.info("%s: generating the data", name)
    rng = np.random.default_rng(0)
    data = (
        tabular_data(work, directory, rng) if isinstance(work, Tabular) else text_data(work, directory, rng)
    )
    key = "tokens_per_second" if work.tokens_per_row else "steps_per_second"
    runs: dict[str, list[dict]] = {v.name: [] for v in VARIANTS[name] if v.runner in runners}
    for round_ in range(repeats):
        for variant in VARIANTS[name]:
            done = runs.get(variant.name)
            if done is None or (done and key not in done[-1]):
                continue  # not selected, or skipped or failed: once says why
            log.info(
                "%s: running %s (%s), round %d of %d",
                name,
                variant.name,
                RUNNER_NAMES[variant.runner],
                round_ + 1,
                repeats,
            )
            done.append(run_variant(work, data, device, variant))
            if key in done[-1]:
                log.info("%s %s: %s %.1f", name, variant.name, key, done[-1][key])
    return {variant: median_run(done, key) for variant, done in runs.items()}


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median ``key`` (the lower middle one of an even count), with every run's ``key``."""
    measured = sorted((r for r in runs if key in r), key=lambda r: r[key])
    if not measured:
        return runs[-1]
    return measured[(len(measured) - 1) // 2] | {"repeats": [r[key] for r in runs if key in r]}


def seo_train_command() -> list[str]:
    """The console script of this interpreter's environment (a pyenv or conda shim adds its own
    start-up), else the module."""
    script = Path(sys.executable).parent / "seo-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "seo_cli.train"]


def run_startup(directory: Path, quick: bool) -> dict[str, dict]:
    """W3: wall time of seo-train commands as subprocesses, the best of a few runs."""
    command = seo_train_command()
    results = {}
    for name, (args, runs, in_quick) in STARTUP_COMMANDS.items():
        if quick and not in_quick:
            continue
        times = []
        for run in range(1 if quick else runs):
            run_dir = directory / f"{name}-{run}"
            argv = [*command, *args] + ([f"hydra.run.dir={run_dir}"] if args != ["--help"] else [])
            log.info("w3: %s", " ".join(argv))
            start = time.perf_counter()
            done = subprocess.run(argv, cwd=directory, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-5:])
                results[name] = {
                    "failed": f"exit status {done.returncode}: {tail}",
                    "command": " ".join(argv),
                }
                break
        else:
            results[name] = {"seconds": min(times), "runs": times, "command": " ".join(argv)}
    return results


@dataclass(frozen=True)
class Goal:
    """A target of the issue: ``value(results)`` against ``threshold`` (``at_least`` or below)."""

    name: str
    workload: str
    device: str | None  # cuda | cpu: only judged on that device; None: any
    value: Callable[[dict], float | None]
    threshold: float
    at_least: bool = True


def _ratio(results: dict, workload: str, top: str, bottom: str, key: str) -> float | None:
    runs = results.get(workload, {})
    if key not in runs.get(top, {}) or key not in runs.get(bottom, {}):
        return None
    return runs[top][key] / runs[bottom][key]


def _value(results: dict, workload: str, runner: str, key: str) -> float | None:
    return results.get(workload, {}).get(runner, {}).get(key)


GOALS = [
    Goal(
        "W1 GPU: d steps/s >= 2x Lightning's",
        "w1",
        "cuda",
        lambda r: _ratio(r, "w1", "d", "c", "steps_per_second"),
        2.0,
    ),
    Goal(
        "W1 GPU: d+cuda_graphs >= 2,000 steps/s",
        "w1",
        "cuda",
        lambda r: _value(r, "w1", "d+cuda_graphs", "steps_per_second"),
        2000.0,
    ),
    Goal(
        "W2 GPU: d+compile tokens/s >= 1.6x Lightning's",
        "w2",
        "cuda",
        lambda r: _ratio(r, "w2", "d+compile", "c", "tokens_per_second"),
        1.6,
    ),
    Goal("W2 GPU: d+compile MFU >= 30%", "w2", "cuda", lambda r: _value(r, "w2", "d+compile", "mfu"), 0.30),
    Goal(
        "W2 GPU: d+compile+cuda_graphs tokens/s >= 2.3x Lightning's",
        "w2",
        "cuda",
        lambda r: _ratio(r, "w2", "d+compile+cuda_graphs", "c", "tokens_per_second"),
        2.3,
    ),
    Goal(
        "W2 GPU: d+compile+cuda_graphs MFU >= 28%",
        "w2",
        "cuda",
        lambda r: _value(r, "w2", "d+compile+cuda_graphs", "mfu"),
        0.28,
    ),
    Goal(
        "W1 GPU: d steps/s >= 3x Lightning's",
        "w1",
        "cuda",
        lambda r: _ratio(r, "w1", "d", "c", "steps_per_second"),
        3.0,
    ),
    Goal(
        "W1 CPU: d steps/s >= 1.8x the minimal loop's",
        "w1",
        "cpu",
        lambda r: _ratio(r, "w1", "d", "a", "steps_per_second"),
        1.8,
    ),
    Goal("W3: seo-train --help < 2 s", "w3", None, lambda r: _value(r, "w3", "help", "seconds"), 2.0, False),
    Goal(
        "W3: seo-train debug=smoke < 15 s",
        "w3",
        None,
        lambda r: _value(r, "w3", "smoke", "seconds"),
        15.0,
        False,
    ),
]


def judge(results: dict, device: torch.device, quick: bool) -> list[dict]:
    verdicts = []
    for goal in GOALS:
        value = goal.value(results) if goal.workload in results else None
        status, note = "n/a", ""
        if goal.workload not in results:
            note = "workload not run"
        elif quick and goal.workload != "w3":
            note = "--quick sizes"
        elif goal.device is not None and goal.device != device.type:
            note = f"a {goal.device} target; this run is on {device.type}"
        elif value is None:
            note = "a runner it needs was skipped or failed"
        else:
            met = value >= goal.threshold if goal.at_least else value < goal.threshold
            status = "pass" if met else "miss"
            if goal.workload == "w3" and os.cpu_count() != 2:
                note = f"the target is for a 2-core CPU; this machine has {os.cpu_count()} cores"
        verdicts.append(
            {"target": goal.name, "value": value, "threshold": goal.threshold, "status": status, "note": note}
        )
    return verdicts


def add_mfu(results: dict[str, dict], work: Text, peak: float | None) -> None:
    per_token = flops_per_token(work)
    for figures in results.values():
        if "tokens_per_second" in figures:
            figures["flops_per_token"] = per_token
            figures["mfu"] = figures["tokens_per_second"] * per_token / peak if peak else None


def workload_table(name: str, work: Tabular | Text, results: dict[str, dict], device_name: str) -> Table:
    text = isinstance(work, Text)
    unit = "tokens/s" if text else "steps/s"
    key = "tokens_per_second" if text else "steps_per_second"
    reference = results.get("a", {}).get(key)
    table = Table(
        title=f"{name.upper()} on {device_name}: epoch {work.epochs} of {work.epochs}, training steps"
    )
    table.add_column("runner")
    table.add_column(unit, justify="right")
    table.add_column("x (a)", justify="right")
    if text:
        table.add_column("MFU", justify="right")
    table.add_column("epoch s", justify="right")
    table.add_column("notes")
    for variant, figures in results.items():
        label = f"{variant} {RUNNER_NAMES[variant[0]]}"
        if key not in figures:
            note = figures.get("skipped") or figures.get("failed", "")
            table.add_row(label, "-", "-", *(["-"] if text else []), "-", note)
            continue
        ratio = f"{figures[key] / reference:.2f}" if reference else "-"
        notes = []
        if "whole_epoch_seconds" in figures:
            notes.append(
                f"whole epoch with val + checkpoints {figures['whole_epoch_seconds']:.2f} s "
                f"({figures['whole_epoch_steps_per_second']:,.0f} steps/s)"
            )
        if "shape_note" in figures:
            notes.append(figures["shape_note"])
        if len(figures.get("repeats", [])) > 1:
            low, high = min(figures["repeats"]), max(figures["repeats"])
            notes.append(f"median of {len(figures['repeats'])}: {low:,.0f}-{high:,.0f}")
        mfu = figures.get("mfu")
        table.add_row(
            label,
            f"{figures[key]:,.0f}",
            ratio,
            *([f"{mfu:.1%}" if mfu is not None else "-"] if text else []),
            f"{figures['epoch_seconds'][-1]:.2f}",
            "; ".join(notes),
        )
    return table


def startup_table(results: dict[str, dict]) -> Table:
    table = Table(title="W3 start-up (wall time of the command)")
    table.add_column("command")
    table.add_column("seconds", justify="right")
    table.add_column("runs")
    for figures in results.values():
        if "seconds" in figures:
            runs = ", ".join(f"{t:.2f}" for t in figures["runs"])
            table.add_row(figures["command"], f"{figures['seconds']:.2f}", runs)
        else:
            table.add_row(figures["command"], "-", figures["failed"])
    return table


def targets_table(verdicts: list[dict]) -> Table:
    table = Table(title="Targets")
    for column in ("target", "value", "threshold", "status", "note"):
        table.add_column(column, justify="right" if column in ("value", "threshold") else "left")
    for v in verdicts:
        value = "-" if v["value"] is None else f"{v['value']:,.3g}"
        table.add_row(v["target"], value, f"{v['threshold']:,.3g}", v["status"], v["note"])
    return table




@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Lightning's and torch.compile's start-up chatter off; our own log lines stay."""
    names = ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning.fabric", "torch._dynamo")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def main() -> None:
    register_configs()  # the schemas (d) composes against, as seo_cli.cli registers them
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=["w1", "w2", "w3"], default=["w1", "w2", "w3"])
    parser.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU check of the script")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each variant's median")
    parser.add_argument(
        "--threads", type=int, help="torch's CPU threads for every runner (default: torch's, one per core)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    # SIGTERM as SystemExit, so the temporary directory (the data, W2's checkpoints) goes on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    kind = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(kind)
    device_name = torch.cuda.get_device_name(device) if kind == "cuda" else f"CPU ({os.cpu_count()} cores)"
    peak = peak_flops(device, args.peak_tflops)
    if kind == "cuda" and peak is None:
        log.warning("No known bf16 peak for %s: MFU is not reported; pass --peak-tflops.", device_name)
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * (os.cpu_count() or 1):
        log.warning(
            "Load average %.1f on %d cores: other processes will slow the timings.",
            load_before,
            os.cpu_count(),
        )
    sizes = QUICK if args.quick else WORKLOADS
    results: dict[str, dict] = {}
    settings: dict[str, dict] = {}
    # Off a terminal rich would wrap the tables at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 160)
    with tempfile.TemporaryDirectory(prefix="seo-speed-") as tmp, quiet_libraries():
        for name in args.workloads:
            directory = Path(tmp) / name
            directory.mkdir()
            if name == "w3":
                results[name] = run_startup(directory, args.quick)
                continue
            work = sizes[name]
            settings[name] = asdict(work)
            results[name] = run_workload(name, work, args.runners, device, directory, args.repeats)
            if isinstance(work, Text):
                add_mfu(results[name], work, peak)
    verdicts = judge(results, device, args.quick)

    for name in args.workloads:
        if name == "w3":
            console.print(startup_table(results[name]))
        else:
            console.print(workload_table(name, sizes[name], results[name], device_name))
    console.print(targets_table(verdicts))

    lightning = lightning_module()
    report = {
        "device": {
            "type": kind,
            "name": device_name,
            "peak_bf16_flops": peak,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "torch": torch.__version__,
        "lightning": lightning.__version__ if lightning is not None else None,
        "python": platform.python_version(),
        "seo_cli": seo_cli.__version__,
        "git": git_revision(),
        "quick": args.quick,
        "repeats": args.repeats,
        "measure": "training throughput of the last epoch (2 of 2); see the module docstring",
        "settings": settings,
        "results": results,
        "targets": verdicts,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log.info("Wrote %s", args.output)
    failed = [f"{w} {r}" for w, runs in results.items() for r, figures in runs.items() if "failed" in figures]
    if failed:
        log.error("Failed: %s", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()

"""seo-export: a checkpoint as an ONNX graph and a JSON sidecar, checked against PyTorch with onnxruntime.

    seo-export checkpoint=outputs/train/<date>/<time>/checkpoints/best.pt output=model.onnx
    seo-export checkpoint=... output=model.onnx input=pages.csv quantize=true

The graph takes the preprocessed inputs (``numeric``, ``categorical``, ``tokens``; batch and sequence
axes dynamic) and returns one output per target: logits for a classifier, the standardised value for a
regression target. The sidecar (``model.json`` beside ``model.onnx``) holds everything that turns raw
rows into those inputs and the outputs into answers (``seo_cli.onnx_model``). Before anything is
written, the export is scored with onnxruntime on rows of the checkpoint's validation split (or
``input``) and compared with PyTorch on the same rows; beyond ``tolerance`` (or below
``min_class_agreement``) nothing is written and the command exits 1 with the figures.
"""

import contextlib
import hashlib
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.table import Table

from seo_cli.console import print_table
from seo_cli.data.preprocess import as_text_values
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, RATE
from seo_cli.errors import UserError
from seo_cli.evaluate import split_rows
from seo_cli.evaluation import predict
from seo_cli.files import write_bytes, write_text
from seo_cli.onnx_model import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    OnnxModel,
    Sidecar,
    agreement,
    max_difference,
    require_packages,
    sidecar_path,
)
from seo_cli.predict import TorchModel, read_rows

log = logging.getLogger(__name__)

OPSETS = range(17, 22)  # operator sets both of torch's exporters write and onnxruntime runs


class Graph(torch.nn.Module):
    """A seo-cli model with positional tensor inputs and a tuple of outputs in target order: the
    signature an ONNX graph has."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], targets: list[str]) -> None:
        super().__init__()
        self.model, self.inputs, self.targets = model, inputs, targets

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(dict(zip(self.inputs, tensors, strict=True)))
        if isinstance(out, torch.Tensor):  # a single-target model may return its output alone
            out = {self.targets[0]: out}
        return tuple(out[name] for name in self.targets)


class Reads(dict):
    """A batch that records which of its inputs the model reads."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


@torch.no_grad()
def inputs_read(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> list[str]:
    """The inputs ``model`` reads, in batch order: the graph takes only those, so scoring an export of a
    model without text (mlp) never tokenizes."""
    batch = Reads({key: torch.from_numpy(value[:2]) for key, value in inputs.items()})
    model.eval()(batch)
    return [key for key in inputs if key in batch.read]


def run_export(cfg: DictConfig) -> dict:
    """Export ``cfg.checkpoint`` to ``cfg.output`` and its sidecar, after the parity check.

    Returns:
        ``{"onnx", "sidecar", "exporter", "rows", "parity", "quantized"}``.

    Raises:
        UserError: a bad knob, checkpoint or input file; an export that differs from PyTorch.
    """
    checkpoint, output = Path(cfg.checkpoint), Path(cfg.output)
    check_knobs(cfg, output)
    require_packages("seo-export")
    if cfg.quantize:
        require_packages("seo-export quantize=true")
    torch_model = TorchModel(checkpoint, "cpu", "error", list(cfg.allowed_targets))
    trained = torch_model.trained
    frame, where = parity_rows(torch_model, cfg)
    targets = [t.name for t in trained.targets]
    inputs = trained.preprocessor.encode_inputs(frame)
    inputs = {key: inputs[key] for key in inputs_read(trained.model, inputs)}
    graph = Graph(trained.model.eval(), list(inputs), targets)
    data, exporter = to_onnx(graph, inputs, cfg.opset)
    reference = torch_outputs(graph, inputs, targets, cfg.batch_size)
    exported = session_for(data, trained, output, quantized=False)
    figures = compare(reference, exported.raw_outputs(inputs, cfg.batch_size), trained, frame)
    report = {"rows": len(frame), "rows_from": where, "fp32": figures}
    show(figures, f"ONNX export against PyTorch, {len(frame)} rows of {where}")
    check_parity(figures, cfg, len(frame), where)
    if cfg.quantize:
        data = quantized(data)
        exported = session_for(data, trained, output, quantized=True)
        report["int8"] = compare(reference, exported.raw_outputs(inputs, cfg.batch_size), trained, frame)
        show(report["int8"], f"int8 (dynamic quantization) against PyTorch, {len(frame)} rows of {where}")
    sidecar = sidecar_state(data, exported.sidecar.inputs, trained, torch_model.missing, cfg.quantize)
    sidecar["export"] = {
        "checkpoint": str(trained.path),
        "exporter": exporter,
        "opset": int(cfg.opset),
        "torch": torch.__version__,
        "parity": report,
    }
    write_bytes(output, data)  # the graph first: a sidecar never names a graph that is not there
    write_text(sidecar_path(output), json.dumps(sidecar, indent=1, allow_nan=False))
    log.info(
        "Wrote %s (%.1f MB, %s exporter%s) and its sidecar %s; score with: seo-predict backend=onnx model=%s "
        "input=<file> output=<file>",
        output,
        len(data) / 2**20,
        exporter,
        ", int8 weights" if cfg.quantize else "",
        sidecar_path(output),
        output,
    )
    return {
        "onnx": str(output),
        "sidecar": str(sidecar_path(output)),
        "exporter": exporter,
        "quantized": bool(cfg.quantize),
        **report,
    }


def check_knobs(cfg: DictConfig, output: Path) -> None:
    """Raises: UserError naming the first knob outside its range."""
    problems = [
        (
            output.suffix.lower() != ".onnx",
            f"output={output} must end in .onnx; its sidecar is written beside it as .json",
        ),
        (cfg.parity_rows < 1, f"parity_rows={cfg.parity_rows} must be at least 1"),
        (cfg.batch_size < 1, f"batch_size={cfg.batch_size} must be at least 1"),
        (
            not (math.isfinite(cfg.tolerance) and cfg.tolerance >= 0),
            f"tolerance={cfg.tolerance} must be a number of at least 0",
        ),
        (
            not 0 <= cfg.min_class_agreement <= 1,
            f"min_class_agreement={cfg.min_class_agreement} must be a share from 0 to 1",
        ),
        (cfg.opset not in OPSETS, f"opset={cfg.opset} must be from {OPSETS[0]} to {OPSETS[-1]}"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(f"{message}.")


def parity_rows(model: TorchModel, cfg: DictConfig) -> tuple[pd.DataFrame, str]:
    """The first ``parity_rows`` rows of ``cfg.input`` that can be scored, or of the checkpoint's own
    validation split, and what they are, for the log and the report.

    Raises:
        UserError: no rows to check on.
    """
    if cfg.input:
        frame, _, reasons, source = read_rows(model, cfg.input, cfg.input_format, [], cfg.encoding)
        frame, where = frame[reasons.isna()], str(source)
    else:
        frame, where = split_rows(model.trained, "val", file_key="input"), "the validation split"
    if frame.empty:
        raise UserError(
            f"{where} has no rows to check the export on; give input=<file> with rows the model reads."
        )
    return frame.head(cfg.parity_rows).reset_index(drop=True), where


def to_onnx(graph: Graph, inputs: dict[str, np.ndarray], opset: int) -> tuple[bytes, str]:
    """The serialized ONNX model of ``graph`` and the exporter that wrote it: torch's dynamo exporter,
    or where it fails on a model, the TorchScript one. Batch (and token) axes are dynamic.

    Raises:
        UserError: neither exporter can export the model.
    """
    # Two rows at least: the exporters specialise an axis of size 1 to a constant.
    example = tuple(
        torch.from_numpy(value[:8] if len(value) > 1 else np.repeat(value[:1], 2, axis=0))
        for value in inputs.values()
    )
    dynamic = {
        name: {0: "batch", 1: "length"} if name == "tokens" and value.shape[1] > 1 else {0: "batch"}
        for name, value in zip(inputs, example, strict=True)
    }
    names = dict(input_names=list(inputs), output_names=graph.targets, opset_version=opset)
    with quiet_exporters():
        try:
            dims = {"batch": torch.export.Dim("batch"), "length": torch.export.Dim("length")}
            shapes = tuple({axis: dims[label] for axis, label in axes.items()} for axes in dynamic.values())
            program = torch.onnx.export(
                graph, example, dynamo=True, dynamic_shapes=(shapes,), verbose=False, **names
            )
            return program.model_proto.SerializeToString(), "dynamo"
        except Exception as err:  # noqa: BLE001 - torch.export raises many types; the other exporter is tried next
            log.warning(
                "torch's dynamo ONNX exporter failed on this model (%s); using the TorchScript exporter.",
                (str(err).strip().splitlines() or [type(err).__name__])[0][:200],
            )
        buffer = io.BytesIO()
        axes = dynamic | {name: {0: "batch"} for name in graph.targets}
        try:
            torch.onnx.export(graph, example, buffer, dynamo=False, dynamic_axes=axes, **names)
        except Exception as err:  # noqa: BLE001
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UserError(
                f"checkpoint's model cannot be exported to ONNX by torch {torch.__version__}: {first}."
            ) from None
    return buffer.getvalue(), "torchscript"


@torch.no_grad()
def torch_outputs(
    graph: Graph, inputs: dict[str, np.ndarray], targets: list[str], batch_size: int
) -> dict[str, np.ndarray]:
    """PyTorch's raw outputs (logits, standardised values) on the CPU, in float32."""
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    batches = (
        ({k: v[start : start + batch_size] for k, v in tensors.items()}, {})
        for start in range(0, len(next(iter(tensors.values()))), batch_size)
    )
    outputs, _ = predict(graph.model, batches)
    if isinstance(outputs, torch.Tensor):
        outputs = {targets[0]: outputs}
    return {name: outputs[name].numpy() for name in targets}


def sidecar_state(data: bytes, inputs: list[str], trained: Any, missing: str, quantized: bool) -> dict:
    """The sidecar's fields for the serialized model ``data`` (``export`` is added by the caller)."""
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": inputs,
        "missing": missing,
        "quantized": bool(quantized),
        "preprocessing": trained.preprocessor.to_state(),
    }


def session_for(data: bytes, trained: Any, output: Path, quantized: bool) -> OnnxModel:
    """The export opened exactly as ``seo-predict backend=onnx`` opens it, so a graph it would refuse is
    refused here, before anything is written."""
    import onnx

    inputs = [i.name for i in onnx.load_model_from_string(data).graph.input]
    state = sidecar_state(data, inputs, trained, "error", quantized)
    return OnnxModel(data, Sidecar.parse(state, sidecar_path(output)), output)


def quantized(data: bytes) -> bytes:
    """``data`` with dynamic int8 weights (onnxruntime.quantization.quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(data)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()


def compare(
    reference: dict[str, np.ndarray], exported: dict[str, np.ndarray], trained: Any, frame: pd.DataFrame
) -> dict:
    """Per target: the largest absolute difference of the raw outputs, the share of rows with the same
    class, and where ``frame`` has the target's labels, the metric of each (accuracy, or RMSE in the
    target's units)."""
    figures = {}
    for t in trained.preprocessor.targets:
        ours, theirs = reference[t.name], exported[t.name]
        row: dict[str, Any] = {"max_abs_diff": max_difference(ours, theirs)}
        labels = frame[t.name] if t.name in frame.columns else None
        if t.type == CLASSIFICATION:
            row["class_agreement"] = agreement(ours, theirs)
            if labels is not None:
                truth = as_text_values(labels).to_numpy()
                names = np.asarray(t.classes, dtype=object)
                row["accuracy_torch"] = float((names[ours.argmax(1)] == truth).mean())
                row["accuracy_onnx"] = float((names[theirs.argmax(1)] == truth).mean())
        elif t.type == MULTILABEL:
            # The share of rows with the same predicted label set (a logit of 0 is probability 0.5).
            same = ((ours >= 0) == (theirs >= 0)).reshape(len(ours), -1).all(axis=1)
            row["class_agreement"] = float(same.mean()) if len(same) else 1.0
        elif labels is not None and t.type != RATE:  # a rate's column holds counts, its output a logit
            truth = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=float)
            known = np.isfinite(truth)
            for key, values in (("rmse_torch", ours), ("rmse_onnx", theirs)):
                error = values.reshape(-1)[known] * t.std + t.mean - truth[known]
                row[key] = float(np.sqrt(np.mean(error**2))) if known.any() else None
        figures[t.name] = row
    return figures


def check_parity(figures: dict, cfg: DictConfig, rows: int, where: str) -> None:
    """Raises: UserError, with the figures, when a target's outputs differ beyond the tolerance."""
    for name, row in figures.items():
        share = row.get("class_agreement", 1.0)
        if row["max_abs_diff"] > cfg.tolerance or share < cfg.min_class_agreement:
            raise UserError(
                f"the ONNX export differs from PyTorch on target {name}: largest difference "
                f"{row['max_abs_diff']:.3g} (tolerance {cfg.tolerance:g}), same class on {share:.2%} of "
                f"{rows} rows of {where} (at least {cfg.min_class_agreement:.2%} needed); nothing was written. "
                "Report it with the model option, or raise tolerance= if the difference is acceptable."
            )


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The exporters' INFO logs (each optimisation pass) and warnings kept out of the user's terminal."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def show(figures: dict, title: str) -> None:
    """The parity figures as a table in the terminal, and in the log."""
    columns = {
        "max_abs_diff": "max |diff|",
        "class_agreement": "same class",
        "accuracy_torch": "acc torch",
        "accuracy_onnx": "acc onnx",
        "rmse_torch": "rmse torch",
        "rmse_onnx": "rmse onnx",
    }
    used = [c for c in columns if any(c in row for row in figures.values())]
    table = Table(title=title)
    table.add_column("target")
    for column in used:
        table.add_column(columns[column], justify="right")
    for name, row in figures.items():
        table.add_row(name, *(format_figure(row.get(c)) for c in used))
    print_table(table)
    for name, row in figures.items():
        log.info("%s: %s", name, ", ".join(f"{k} {format_figure(v)}" for k, v in row.items()))


def format_figure(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) and abs(value) < 1e-3 and value else f"{value:.4f}"


if __name__ == "__main__":  # python -m seo_cli.export ...: the seo-export command
    from seo_cli.cli import export as seo_export

    seo_export()

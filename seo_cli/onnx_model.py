"""An exported model (``seo-export``) scored with onnxruntime, without torch: ``seo-predict backend=onnx``.

An export is two files: the ONNX graph (``model.onnx``) and its JSON sidecar (``model.json``) holding
what turns raw rows into the graph's inputs and its outputs back into answers: the training run's
fitted preprocessing (column mapping, numeric scaling, category codes, the tokenizer's JSON, class
names, regression targets' mean and scale), its missing-value policy, and the SHA-256 of the graph.

Both are untrusted files. The sidecar is checked field by field (the preprocessing as strictly as a
checkpoint's); the graph must be the file the sidecar names (by hash), parse, keep every tensor inside
the file (external data could read any file on the machine), use only standard operator sets, no
control flow or local functions, and have exactly the inputs and outputs the sidecar describes. When it
runs, onnxruntime allocates from an arena capped at ``MAX_MEMORY`` and a batch is stopped after
``MAX_BATCH_SECONDS``, so a crafted graph cannot take the machine's memory or run forever.
"""

import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, RATE, Target
from seo_cli.errors import UserError

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "seo-cli onnx export"
SIDECAR_VERSION = 1
MAX_SIDECAR_BYTES = 100 * 2**20  # a sidecar is its tokenizer (about 1 MB for 32,000 tokens) and a few KB more
MAX_ONNX_BYTES = 2 * 2**30  # protobuf's own limit on one message
# onnxruntime's arena for scoring: batch_size rows of the largest model fit well within it.
MAX_MEMORY = 4 * 2**30
MAX_BATCH_SECONDS = 600.0
INPUT_TYPES = {"numeric": "tensor(float)", "categorical": "tensor(int64)", "tokens": "tensor(int64)"}
# Operator sets onnxruntime implements itself (the exporter writes the first, dynamic quantization the
# last); anything else would need a custom-operator library.
DOMAINS = {"", "ai.onnx", "com.microsoft"}
CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}  # graphs that repeat without a bound in the file
SIDECAR_KEYS = {
    "format",
    "version",
    "onnx_sha256",
    "inputs",
    "missing",
    "preprocessing",
    "quantized",
    "export",
}


def require_packages(command: str) -> None:
    """Raises: UserError naming the pip extra when onnx or onnxruntime is not installed."""
    import importlib.util

    absent = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if absent:
        raise UserError(
            f"{command} needs the package {absent[0]}, which is not installed; "
            "install the export extra: pip install 'seo-cli[onnx]'."
        )


def sidecar_path(model_path: Path) -> Path:
    """Where an export's sidecar is: ``model.onnx`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, as torch computes it (max subtracted first), in float32."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def label_probabilities(logits: np.ndarray) -> np.ndarray:
    """A multilabel target's sigmoid of each logit ``[rows, labels]`` (a one-label head gives ``[rows]``)."""
    return (0.5 * (1 + np.tanh(0.5 * logits.astype(np.float64)))).reshape(len(logits), -1).astype(np.float32)


@dataclass
class Sidecar:
    """The checked contents of an export's JSON sidecar."""

    path: Path
    onnx_sha256: str
    inputs: list[str]
    missing: str
    preprocessor: Preprocessor
    quantized: bool
    export: dict[str, Any]  # where it came from and the parity figures: shown, never acted on

    @property
    def targets(self) -> list[Target]:
        return [Target(t.name, t.type) for t in self.preprocessor.targets]

    @classmethod
    def read(cls, path: Path) -> "Sidecar":
        """Read and check ``path``.

        Raises:
            UserError: missing, too large, not JSON, or a field of the wrong type, shape or bound: one
                sentence naming the file and the field.
        """
        data = read_capped(path, MAX_SIDECAR_BYTES, "sidecar")
        try:
            state = json.loads(data)
        except (ValueError, RecursionError) as err:  # also too deep, or an integer of thousands of digits
            raise UserError(
                f"sidecar {path} is not JSON ({str(err)[:80]}); export the model again with seo-export."
            ) from None
        return cls.parse(state, path)

    @classmethod
    def parse(cls, state: Any, path: Path) -> "Sidecar":
        """Check the parsed JSON ``state`` of the sidecar at ``path``.

        Raises:
            UserError: a field of the wrong type, shape or bound, naming the file and the field.
        """
        where = f"sidecar {path}"

        def need(ok: bool, field: str, must: str) -> None:
            if not ok:
                raise UserError(f"{where}: {field} must be {must}; export the model again with seo-export.")

        need(isinstance(state, dict), "its top level", "a JSON object")
        need(state.get("format") == SIDECAR_FORMAT, "format", repr(SIDECAR_FORMAT))
        need(state.get("version") == SIDECAR_VERSION, "version", f"{SIDECAR_VERSION}")
        unknown = sorted(str(k)[:60] for k in set(state) - SIDECAR_KEYS)
        need(not unknown, f"{unknown[0]!r}" if unknown else "", "absent (it is not a field of a sidecar)")
        digest = state.get("onnx_sha256")
        need(
            isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
            "onnx_sha256",
            "the 64 hexadecimal digits of the ONNX file's SHA-256",
        )
        missing = state.get("missing")
        need(missing in ("error", "impute"), "missing", "'error' or 'impute'")
        need(type(state.get("quantized")) is bool, "quantized", "true or false")
        export = state.get("export", {})
        need(isinstance(export, dict), "export", "a JSON object")
        pre = Preprocessor.from_state(state.get("preprocessing"), where)
        available = [
            key
            for key, present in (
                ("numeric", pre.numeric_columns),
                ("categorical", pre.categorical_columns),
                ("tokens", pre.tokenizer_json),
            )
            if present
        ]
        inputs = state.get("inputs")
        need(
            isinstance(inputs, list)
            and 0 < len(inputs) == len(set(map(str, inputs)))
            and all(i in available for i in inputs),
            "inputs",
            f"a list of the model's inputs, each once, among {', '.join(available) or 'none'}",
        )
        return cls(path, digest, inputs, missing, pre, state["quantized"], export)


def read_capped(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing a missing file or one over ``limit`` bytes before reading it all.

    Raises:
        UserError: one sentence naming the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; give the path seo-export wrote.") from None
    except IsADirectoryError:
        raise UserError(
            f"{what} {path} is a directory; give the path of the file seo-export wrote."
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}.") from None
    if len(data) > limit:
        raise UserError(
            f"{what} {path} is larger than {limit // 2**20:,} MB, more than seo-export writes; "
            "export the model again with seo-export."
        )
    return data


def graph_problem(data: bytes) -> str | None:
    """What makes the serialized ONNX model ``data`` other than what seo-export writes, or None."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        return f"it is not an ONNX model ({str(err)[:80] or type(err).__name__})"
    if len(model.functions):
        return "it defines local functions"
    domains = {o.domain for o in model.opset_import}
    if not domains <= DOMAINS:
        return f"it imports the operator set {sorted(domains - DOMAINS)[0]!r}"
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
        for node in graph.node:
            if node.domain not in DOMAINS:
                return f"its node {node.name!r} is of the operator set {node.domain!r}"
            if node.op_type in CONTROL_FLOW:
                return f"it has control flow ({node.op_type})"
            for attribute in node.attribute:
                tensors += [attribute.t, *attribute.tensors]
                graphs += [attribute.g, *attribute.graphs]
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
            return "it keeps tensors in external files"
    return None


class OnnxModel:
    """An export loaded for scoring: its sidecar's preprocessing and an onnxruntime session on the CPU.

    The same interface as ``seo_cli.predict.TorchModel``: ``preprocessor``, ``missing``, ``targets`` and
    ``outputs(frame, batch_size)``.
    """

    def __init__(self, data: bytes, sidecar: Sidecar, path: Path) -> None:
        """Check the serialized model ``data`` (from ``path``) against ``sidecar`` and open a session on it.

        Raises:
            UserError: the model is not the one the sidecar was written for, is not what seo-export
                writes, or does not load.
        """
        self.sidecar, self.path = sidecar, Path(path)
        self.preprocessor = sidecar.preprocessor
        self.missing = sidecar.missing
        self.targets = sidecar.targets
        if hashlib.sha256(data).hexdigest() != sidecar.onnx_sha256:
            raise UserError(
                f"ONNX file {path} is not the model its sidecar {sidecar.path} was written for "
                "(their SHA-256 differ); give the pair seo-export wrote together, or export again."
            )
        problem = graph_problem(data)
        if problem:
            raise UserError(f"ONNX file {path}: {problem}, which seo-export never writes; export again.")
        self.session = new_session(data, self.path)
        self.check_signature()

    @classmethod
    def load(cls, model_path: Path, sidecar: Path | None = None) -> "OnnxModel":
        """The export at ``model_path`` with its sidecar (by default ``sidecar_path(model_path)``).

        Raises:
            UserError: either file is missing, too large or not what seo-export writes.
        """
        require_packages("seo-predict backend=onnx")
        model_path = Path(model_path)
        checked = Sidecar.read(Path(sidecar) if sidecar else sidecar_path(model_path))
        return cls(read_capped(model_path, MAX_ONNX_BYTES, "ONNX file"), checked, model_path)

    def check_signature(self) -> None:
        """The graph's inputs and outputs must be the sidecar's, with its shapes.

        Raises:
            UserError: naming the first input or output that differs.
        """
        pre, where = self.preprocessor, f"ONNX file {self.path}"
        widths = {"numeric": len(pre.numeric_columns), "categorical": len(pre.categorical_columns)}
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != self.sidecar.inputs:
            raise UserError(
                f"{where} takes the inputs {[i.name for i in inputs]}, its sidecar {self.sidecar.path} "
                f"{self.sidecar.inputs}; give the pair seo-export wrote together."
            )
        for i in inputs:
            width = widths.get(i.name)
            if (
                i.type != INPUT_TYPES[i.name]
                or len(i.shape) != 2
                or (width is not None and i.shape[1] != width)
            ):
                raise UserError(
                    f"{where}: input {i.name!r} is {i.type} of shape {i.shape}, not what its sidecar's "
                    "preprocessing makes; give the pair seo-export wrote together."
                )
        outputs = self.session.get_outputs()
        if [o.name for o in outputs] != [t.name for t in self.targets]:
            raise UserError(
                f"{where} has the outputs {[o.name for o in outputs]}, its sidecar the targets "
                f"{[t.name for t in self.targets]}; give the pair seo-export wrote together."
            )
        for o, t in zip(outputs, pre.targets, strict=True):
            shape_ok = (
                len(o.shape) == 2 and o.shape[1] == len(t.classes)
                if t.type == CLASSIFICATION or t.type == MULTILABEL and len(t.classes) > 1
                else len(o.shape) == 1
            )
            if o.type != "tensor(float)" or not shape_ok:
                raise UserError(
                    f"{where}: output {o.name!r} is {o.type} of shape {o.shape}, which does not fit target "
                    f"{t.name} of its sidecar; give the pair seo-export wrote together."
                )

    def raw_outputs(self, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
        """The graph's outputs (logits, standardised values) for encoded ``inputs``, ``batch_size`` rows
        at a time.

        Raises:
            UserError: a batch needs more than ``MAX_MEMORY`` or runs over ``MAX_BATCH_SECONDS``.
        """
        import onnxruntime as ort

        rows = len(next(iter(inputs.values())))
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.targets}
        for start in range(0, rows, batch_size):
            feed = {name: inputs[name][start : start + batch_size] for name in self.sidecar.inputs}
            options = ort.RunOptions()
            watchdog = threading.Timer(MAX_BATCH_SECONDS, setattr, (options, "terminate", True))
            watchdog.start()
            try:
                values = self.session.run(None, feed, options)
            except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail/RuntimeException types
                raise UserError(self.run_failure(err, start)) from None
            finally:
                watchdog.cancel()
            for target, value in zip(self.targets, values, strict=True):
                parts[target.name].append(value)
        return {name: np.concatenate(chunks) if chunks else np.empty(0) for name, chunks in parts.items()}

    def run_failure(self, err: Exception, start: int) -> str:
        text = str(err)
        if "Available memory" in text or "bad_alloc" in text:
            return (
                f"ONNX file {self.path}: scoring rows from {start + 1} needs more than the "
                f"{MAX_MEMORY // 2**30} GB allowed; lower batch_size."
            )
        if "terminate" in text.lower() or "cancel" in text.lower():
            return f"ONNX file {self.path}: a batch ran for more than {MAX_BATCH_SECONDS:.0f} s and was stopped; lower batch_size."
        return (
            f"ONNX file {self.path} failed on rows from {start + 1}: {text.strip().splitlines()[-1][:200]}."
        )

    def outputs(self, frame: pd.DataFrame, batch_size: int) -> dict[str, np.ndarray]:
        """Per target: class probabilities ``[rows, classes]``, a rate ``[rows]``, or the standardised value ``[rows]``."""
        raw = self.raw_outputs(self.preprocessor.encode_inputs(frame, self.sidecar.inputs), batch_size)
        outputs = {}
        for t in self.targets:
            if t.type == CLASSIFICATION:
                outputs[t.name] = class_probabilities(raw[t.name])
            elif t.type == MULTILABEL:
                outputs[t.name] = label_probabilities(raw[t.name])
            elif t.type == RATE:  # the sigmoid of the logit, in float64 so a large one does not overflow exp
                outputs[t.name] = (0.5 * (1 + np.tanh(0.5 * raw[t.name].reshape(-1).astype(np.float64)))).astype(np.float32)
            else:
                outputs[t.name] = raw[t.name].reshape(-1)
        return outputs


_arena = threading.Lock()
_arena_registered = False


def new_session(data: bytes, path: Path) -> Any:
    """An onnxruntime session on the CPU for the model bytes ``data`` (the bytes that were hashed and
    checked, not the file again), allocating from the process's arena capped at ``MAX_MEMORY``.

    Raises:
        UserError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    global _arena_registered
    with _arena:
        if not _arena_registered:
            memory = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg(MAX_MEMORY, -1, -1, -1))
            _arena_registered = True
    options = ort.SessionOptions()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3  # errors only: they reach the user as the one sentence below
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UserError(
            f"ONNX file {path} cannot be loaded by onnxruntime ({first[:200]}); export again."
        ) from None


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose predicted class is the same (1.0 for no rows)."""
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean()) if len(a) else 1.0


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference (0.0 for no rows); NaN anywhere makes it infinite."""
    if not len(a):
        return 0.0
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return diff if math.isfinite(diff) else math.inf

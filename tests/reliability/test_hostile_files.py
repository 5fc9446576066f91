"""The hostile-checkpoint suite (issue 16): crafted files of four classes, each tried through
``load_checkpoint``, ``seo-eval``, ``seo-predict`` and ``resume=PATH``.

1. the allow-list bypassed by dotted names (``seo_cli.checkpoint.torch.load``) or nested ``_target_`` nodes;
2. a node routed by ``${...}`` interpolation or a YAML alias, merge key or tag;
3. data stored in the checkpoint reaching a builder or a file operation (``_target_`` dicts in class counts,
   preprocessing, optimizer or scheduler state; numbered file names that climb out of the directory);
4. resource bombs: views claiming billions of elements, ``max_length`` 5e6, ``data.num_rows`` 3e8, alias and
   interpolation chains, deep or self-referencing nesting, huge layer lists, compressed zip entries.

Every attempt: the marker file the payloads would write never appears; it ends within 10 s and within 1 GB of
the process's size; and it is refused with one sentence naming the file, and the field wherever the entrypoint
reads that field. An entrypoint that never reads the hostile field (``load_checkpoint`` does not build what the
stored config names; ``seo-predict`` does not regenerate rows) may instead complete normally, bounded.

All cases of one entrypoint run in one forked child whose address space is capped (RLIMIT_AS) at its size
plus 1 GB: a bomb dies there with a MemoryError, recorded as a failure, instead of exhausting the machine.
"""

import copy
import json
import multiprocessing
import os
import pathlib
import resource
import struct
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from seo_cli.checkpoint import CheckpointManager, load_checkpoint
from seo_cli.data.preprocess import _untrained_tokenizer
from seo_cli.errors import UserError
from seo_cli.evaluate import run_eval
from seo_cli.predict import run_predict
from seo_cli.train import train

from .support import assert_clean_error, compose_config, compose_train, count, time_limit, tiny_overrides

pytestmark = pytest.mark.reliability

GB = 2**30
SECONDS = 10
ENTRYPOINTS = ("load_checkpoint", "seo-eval", "seo-predict", "resume=PATH")
LOADS = frozenset(ENTRYPOINTS)  # the field is checked when the file loads: every entrypoint refuses
BUILDS = frozenset(
    {"seo-eval", "seo-predict", "resume=PATH"}
)  # stored config: resume compares it with its own
SCORES = frozenset({"seo-eval", "seo-predict"})  # preprocessing, class counts: resume fits its own
EVAL = frozenset({"seo-eval"})  # the rows seo-eval regenerates
RESUME = frozenset({"resume=PATH"})  # optimizer state: only a resumed run puts it back


class WritesMarker:
    """Unpickling this runs ``exec``, which writes the marker: the shape of every pickle exploit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('the payload ran')",)


@dataclass
class Ctx:
    marker: Path
    directory: Path
    table: Path


@dataclass
class Case:
    kind: int  # the issue's class, 1-4
    name: str
    make: Callable[[dict, Ctx], Any]  # edits the state in place, or returns the file's bytes
    field: str  # what the refusal names
    refused_by: frozenset = LOADS
    fields: dict[str, str] = field(default_factory=dict)  # another field named by one entrypoint
    # Found only when a resumed run puts the state back into the objects it built (RunState.restore), which
    # does not know the file's path yet: the sentence names "the checkpoint" there.
    at_restore: bool = False


# --- editing a checkpoint --------------------------------------------------------------------------------


def touch(ctx: Ctx) -> dict:
    """A Hydra node that, if built, creates the marker: ``Path(marker).touch()``."""
    return {
        "_target_": "seo_cli.checkpoint.Path.touch",
        "self": {"_target_": "seo_cli.checkpoint.Path", "_args_": [str(ctx.marker)]},
    }


def config(edit: Callable[[dict, Ctx], None]) -> Callable[[dict, Ctx], None]:
    def make(state: dict, ctx: Ctx) -> None:
        parsed = yaml.safe_load(state["config"])
        edit(parsed, ctx)
        state["config"] = yaml.safe_dump(parsed, sort_keys=False)

    return make


def config_text(edit: Callable[[str, Ctx], str]) -> Callable[[dict, Ctx], None]:
    def make(state: dict, ctx: Ctx) -> None:
        state["config"] = edit(state["config"], ctx)

    return make


def model_line(line: str) -> Callable[[str, Ctx], str]:
    """The stored config with ``line`` added to its model section."""
    return lambda text, ctx: text.replace("model:\n", f"model:\n{line.format(marker=ctx.marker)}\n", 1)


def setter(*keys: Any, value: Callable[[dict, Ctx], Any]) -> Callable[[dict, Ctx], None]:
    """state[keys[0]][keys[1]]... = value(state, ctx)."""

    def make(state: dict, ctx: Ctx) -> None:
        node = state
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value(state, ctx)

    return make


def stride0(dtype: torch.dtype = torch.float32, n: int = 2_000_000_000) -> torch.Tensor:
    """One element seen as ``n``: a few bytes in the file, ``n`` elements at the first copy."""
    return torch.zeros(1, dtype=dtype).expand(n)


def rezip(
    state: dict, ctx: Ctx, *, compression: int = zipfile.ZIP_STORED, edit_pkl=None, edit_bytes=None
) -> bytes:
    """The checkpoint's bytes, rewritten entry by entry."""
    source = ctx.directory / "rezip-source.pt"
    torch.save(state, source)
    target = ctx.directory / "rezip-target.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if edit_pkl is not None and info.filename.endswith("data.pkl"):
                data = edit_pkl(data)
            zout.writestr(info.filename, data)
    data = target.read_bytes()
    return edit_bytes(data) if edit_bytes is not None else data


def declared_storage(state: dict, ctx: Ctx) -> bytes:
    """A first storage of 1,000 floats declared in data.pkl as 2e9 of them (8 GB)."""
    big = struct.pack("<i", 2_000_000_000)
    edit = lambda data: data.replace(b"M\xe8\x03t", b"J" + big + b"t", 1)  # noqa: E731
    return rezip({"notes": torch.arange(1000.0), **state}, ctx, edit_pkl=edit)


def deep_list(data: bytes, depth: int = 100_000) -> bytes:
    """data.pkl with ``notes``: a list nested ``depth`` deep, built by opcodes (pickling one would recurse)."""
    assert data.endswith(b"u.")
    return data[:-1] + b"X\x05\x00\x00\x00notes" + b"]" * depth + b"a" * (depth - 1) + b"s."


def patch_central_size(data: bytes) -> bytes:
    """The central directory's uncompressed size of the first entry set to 2 GB: entries overlap."""
    first = data.find(b"PK\x01\x02")
    return data[: first + 24] + struct.pack("<I", 2**31) + data[first + 28 :]


def patch_entry_count(data: bytes) -> bytes:
    """The end record claiming 300,000 entries (zip64), before zipfile reads any."""
    at = data.rfind(b"PK\x05\x06")
    eocd = bytearray(data[at:])
    eocd[8:12] = struct.pack("<HH", 0xFFFF, 0xFFFF)
    locator_and_record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, 300_000, 300_000, 0, 0)
    zip64_at = at
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, zip64_at, 1)
    return data[:at] + locator_and_record + locator + bytes(eocd)


def shared_lists(levels: int = 5, width: int = 100) -> list:
    """100^5 references to one float in a few KB (the pickle memo shares each level)."""
    node: Any = [0.0]
    for _ in range(levels):
        node = [node] * width
    return node


def cycle() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def tokenizer_with_regex() -> str:
    """seo-train's tokenizer with a Replace step whose pattern backtracks exponentially."""
    spec = json.loads(_untrained_tokenizer().to_str())
    spec["normalizer"] = {"type": "Replace", "pattern": {"Regex": "(a+)+$"}, "content": "b"}
    spec["model"]["vocab"] = {"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "a": 3}
    return json.dumps(spec)


def tokenizer_ids_out_of_range() -> str:
    spec = json.loads(_untrained_tokenizer().to_str())
    spec["model"]["vocab"] = {"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "a": 1_000_000_000}
    return json.dumps(spec)


def text_preprocessing(tokenizer: str) -> Callable[[dict, Ctx], None]:
    def make(state: dict, ctx: Ctx) -> None:
        state["preprocessing"]["text_columns"] = ["t"]
        state["preprocessing"]["tokenizer_json"] = tokenizer

    return make


def optimizer_state(state: dict) -> dict:
    return state["optimizer"]["state"][0]


def first_weight(state: dict) -> str:
    return next(
        name for name in state["model"] if name.endswith("weight") and state["model"][name].dim() == 2
    )


def replace_weight(value: Callable[[dict], Any]) -> Callable[[dict, Ctx], None]:
    def make(state: dict, ctx: Ctx) -> None:
        state["model"][first_weight(state)] = value(state)

    return make


def numbered(name: Callable[[Ctx], str]) -> Callable[[dict, Ctx], None]:
    def make(state: dict, ctx: Ctx) -> None:
        state["checkpoints"] = {"numbered": [{"name": name(ctx), "value": 0.5, "epoch": 1}]}

    return make


def model_metadata(state: dict, ctx: Ctx) -> None:
    state["model"]._metadata[""]["version"] = stride0()


def billion_laughs(text: str, ctx: Ctx) -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
        for i in range(20)
    ]
    return "\n".join(lines) + "\n" + text.replace("  activation: relu", f"  activation: *{chr(97 + 20)}")


def interpolation_chain(text: str, ctx: Ctx) -> str:
    lines = ["l0: xxxxxxxxxx"] + [f"l{i + 1}: ${{l{i}}}${{l{i}}}" for i in range(40)]
    return "\n".join(lines) + "\n" + text.replace("  activation: relu", "  activation: ${l40}")


def flow_list(key: str, values: str) -> Callable[[str, Ctx], str]:
    """The model's ``key`` as a long flow-style list (``[8, 8, ...]``: 3 characters an item)."""

    def edit(text: str, ctx: Ctx) -> str:
        lines = text.split("\n")
        start = lines.index(f"  {key}:")
        end = start + 1
        while lines[end].startswith("  - "):
            end += 1
        return "\n".join([*lines[:start], f"  {key}: [{values}]", *lines[end:]])

    return edit


CASES = [
    # 1. The allow-list bypassed by dotted names and nested targets.
    Case(
        1,
        "dotted-path-write-text",
        config(
            lambda c, x: c.update(
                model={"_target_": "seo_cli.checkpoint.Path.write_text", "_args_": [str(x.marker), "x"]}
            )
        ),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "dotted-torch-load",
        config(
            lambda c, x: c.update(
                model={
                    "_target_": "seo_cli.checkpoint.torch.load",
                    "f": str(x.directory / "evil.pkl"),
                    "weights_only": False,
                }
            )
        ),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "dotted-os-system-as-loss",
        config(
            lambda c, x: c.update(
                loss={"_target_": "seo_cli.checkpoint.os.system", "_args_": [f"touch {x.marker}"]}
            )
        ),
        "loss._target_",
        BUILDS,
        {"resume=PATH": "loss"},
    ),
    Case(
        1,
        "dotted-torch-save-in-models",
        config(lambda c, x: c["model"].update(_target_="seo_cli.models.mlp.torch.save")),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "nested-list-in-model-arg",
        config(lambda c, x: c["model"].update(activation=[touch(x)])),
        "model.activation",
        BUILDS,
    ),
    Case(
        1,
        "nested-exec-in-model-arg",
        config(
            lambda c, x: c["model"].update(
                activation={"_target_": "builtins.exec", "_args_": [f"open({str(x.marker)!r}, 'w')"]}
            )
        ),
        "model.activation",
        BUILDS,
    ),
    Case(
        1,
        "nested-target-in-loss-arg",
        config(lambda c, x: c["loss"].update(weights=touch(x))),
        "loss.weights",
        BUILDS,
    ),
    Case(
        1,
        "torch-hub-load",
        config(
            lambda c, x: c.update(
                model={
                    "_target_": "torch.hub.load",
                    "repo_or_dir": str(x.directory),
                    "model": "m",
                    "source": "local",
                    "trust_repo": True,
                }
            )
        ),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "seo-cli-function-as-model",
        config(
            lambda c, x: c.update(
                model={"_target_": "seo_cli.registry.allowed_classes", "names": ["os.system"]}
            )
        ),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "model-class-as-loss",
        config(lambda c, x: c["loss"].update(_target_="seo_cli.models.mlp.MLP")),
        "loss._target_",
        BUILDS,
        {"resume=PATH": "loss"},
    ),
    Case(
        1,
        "target-with-a-trailing-space",
        config(lambda c, x: c["model"].update(_target_="seo_cli.models.mlp.MLP ")),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "target-as-a-list",
        config(lambda c, x: c["model"].update(_target_=["seo_cli.models.mlp.MLP"])),
        "model._target_",
        BUILDS,
    ),
    Case(
        1,
        "hydra-keys-in-the-node",
        config(lambda c, x: c["model"].update(_partial_=True, _args_=[str(x.marker)])),
        "model._partial_",
        BUILDS,
    ),
    Case(
        1,
        "pickled-path-object",
        setter("notes", value=lambda s, x: pathlib.Path(x.marker)),
        "holds objects other than tensors",
    ),
    Case(
        1,
        "pickled-reduce-in-optimizer",
        setter("optimizer", "state", 0, "exp_avg", value=lambda s, x: WritesMarker(x.marker)),
        "holds objects other than tensors",
    ),
    # 2. A node routed by interpolation, or by YAML's own references.
    Case(
        2,
        "route-top-level-node",
        config(lambda c, x: c.update(x=[touch(x)]) or c["model"].update(activation="${x}")),
        "interpolation",
        BUILDS,
    ),
    Case(
        2,
        "route-target-name",
        config(lambda c, x: c.update(x="os.system") or c["model"].update(_target_="${x}")),
        "interpolation",
        BUILDS,
    ),
    Case(
        2,
        "env-resolver",
        config(lambda c, x: c["model"].update(activation="${oc.env:HOME}")),
        "interpolation",
        BUILDS,
    ),
    Case(
        2,
        "interpolation-in-a-key",
        config(lambda c, x: c["model"].update({"${x}": 1})),
        "interpolation",
        BUILDS,
    ),
    Case(
        2,
        "escaped-interpolation",
        config(lambda c, x: c["model"].update(activation="\\${x}")),
        "interpolation",
        BUILDS,
    ),
    Case(
        2,
        "interpolation-in-data-path",
        config(lambda c, x: c["data"].update(path="${oc.decode:'/etc/passwd'}")),
        "interpolation",
        BUILDS,
    ),
    Case(
        2,
        "yaml-alias-routing",
        config_text(
            lambda t, x: (
                f"x: &p {{_target_: os.system, _args_: ['touch {x.marker}']}}\n"
                + t.replace("  activation: relu", "  activation: *p")
            )
        ),
        "anchors or aliases",
        BUILDS,
    ),
    Case(
        2,
        "yaml-merge-key",
        config_text(
            lambda t, x: (
                f"x: &p {{_target_: os.system, _args_: ['touch {x.marker}']}}\n"
                + t.replace("model:\n", "model:\n  <<: *p\n", 1)
            )
        ),
        "anchors or aliases",
        BUILDS,
    ),
    Case(
        2,
        "yaml-python-tag",
        config_text(model_line("  activation: !!python/object/apply:os.system ['touch {marker}']")),
        "tag",
        BUILDS,
    ),
    Case(2, "yaml-local-tag", config_text(model_line("  activation: !custom relu")), "tag", BUILDS),
    # 3. Data stored in the checkpoint reaching a builder or a file operation.
    Case(
        3,
        "target-in-class-counts",
        setter("class_counts", "label", value=lambda s, x: touch(x)),
        "class_counts",
    ),
    Case(
        3,
        "targets-in-a-class-counts-list",
        setter("class_counts", "label", value=lambda s, x: [touch(x), 1]),
        "class_counts",
    ),
    Case(
        3,
        "class-counts-of-the-wrong-length",
        setter("class_counts", "label", value=lambda s, x: [21]),
        "class_counts.label",
        SCORES,
    ),
    Case(
        3,
        "target-in-preprocessing-classes",
        setter("preprocessing", "targets", 0, "classes", value=lambda s, x: [touch(x), "lo"]),
        "preprocessing.targets[0].classes",
        SCORES,
    ),
    Case(
        3,
        "target-key-in-preprocessing",
        setter("preprocessing", "_target_", value=lambda s, x: "os.system"),
        "preprocessing",
        SCORES,
    ),
    Case(
        3,
        "numeric-mean-of-the-wrong-length",
        setter("preprocessing", "numeric_mean", value=lambda s, x: [0.0]),
        "preprocessing.numeric_mean",
        SCORES,
    ),
    Case(
        3,
        "target-in-categories",
        setter("preprocessing", "categories", "c", value=lambda s, x: touch(x)),
        "preprocessing.categories",
        SCORES,
    ),
    Case(
        3,
        "numeric-scale-zero",
        setter("preprocessing", "numeric_scale", value=lambda s, x: [0.0, 1.0]),
        "preprocessing.numeric_scale",
        SCORES,
    ),
    Case(
        3,
        "target-as-target-type",
        setter("preprocessing", "targets", 1, "type", value=lambda s, x: touch(x)),
        "preprocessing.targets[1].type",
        SCORES,
    ),
    Case(
        3,
        "loss-choice-not-a-loss",
        config(lambda c, x: c["loss"].update(classification="os.system")),
        "loss",
        BUILDS,
    ),
    Case(
        3,
        "target-as-optimizer-state",
        setter("optimizer", "state", 0, value=lambda s, x: {"_target_": "os.system", "_args_": ["x"]}),
        "optimizer.state[0]._target_",
    ),
    Case(
        3,
        "target-as-learning-rate",
        setter("optimizer", "param_groups", 0, "lr", value=lambda s, x: touch(x)),
        "optimizer.param_groups[0].lr",
    ),
    Case(3, "target-as-scaler-state", setter("scaler", value=lambda s, x: touch(x)), "scaler"),
    Case(3, "unknown-loop-field", setter("position", "record_epoch", value=lambda s, x: 1), "position"),
    Case(
        3,
        "target-in-loop-history",
        setter("position", "history", value=lambda s, x: [touch(x)]),
        "position.history",
    ),
    Case(
        3, "target-as-early-stopping", setter("early_stopping", value=lambda s, x: touch(x)), "early_stopping"
    ),
    Case(
        3, "numbered-file-climbing-out", numbered(lambda x: "../../victim.pt"), "checkpoints.numbered[0].name"
    ),
    Case(
        3,
        "numbered-file-absolute",
        numbered(lambda x: str(x.directory / "victim.pt")),
        "checkpoints.numbered[0].name",
    ),
    Case(
        3,
        "numbered-file-with-a-separator",
        numbered(lambda x: "epoch=001-val_loss/../../victim=0.5000.pt"),
        "checkpoints.numbered[0].name",
    ),
    Case(3, "target-as-python-rng", setter("rng", "python", value=lambda s, x: touch(x)), "rng.python"),
    Case(3, "target-as-a-weight", replace_weight(lambda s: {"_target_": "os.system"}), "model."),
    Case(3, "target-in-history", setter("history", value=lambda s, x: [touch(x)]), "history"),
    Case(3, "epoch-as-a-tensor", setter("epoch", value=lambda s, x: torch.tensor(1)), "epoch"),
    Case(
        3,
        "torch-rng-state-torch-refuses",
        setter("rng", "torch", value=lambda s, x: torch.zeros_like(s["rng"]["torch"])),
        "rng.torch",
    ),
    Case(
        3,
        "optimizer-state-of-another-shape",
        lambda s, x: optimizer_state(s).update(exp_avg=torch.zeros(3)),
        "optimizer.state[0].exp_avg",
        RESUME,
        at_restore=True,
    ),
    Case(
        3,
        "optimizer-missing-a-parameter",
        lambda s, x: s["optimizer"]["state"].pop(s["optimizer"]["param_groups"][0]["params"].pop()),
        "optimizer.param_groups[0].params",
        RESUME,
        at_restore=True,
    ),
    Case(
        3,
        "weights-of-another-shape",
        replace_weight(lambda s: torch.zeros(3, 3)),
        "weight",
        BUILDS,
        at_restore=True,
    ),
    # 4. Resource bombs.
    Case(4, "stride-0-weight", replace_weight(lambda s: stride0()), "owning its storage"),
    Case(
        4,
        "stride-0-optimizer-moment",
        lambda s, x: optimizer_state(s).update(exp_avg=stride0()),
        "optimizer.state",
    ),
    Case(
        4,
        "stride-0-numpy-key",
        setter("rng", "numpy", "key", value=lambda s, x: stride0(torch.int64)),
        "rng.numpy.key",
    ),
    Case(
        4,
        "overlapping-view",
        replace_weight(lambda s: torch.arange(100_000.0).as_strided((50_000, 50_000), (1, 1))),
        "owning its storage",
    ),
    Case(4, "offset-view", replace_weight(lambda s: torch.zeros(1000)[500:]), "owning its storage"),
    Case(
        4,
        "meta-tensor-of-2e9",
        replace_weight(lambda s: torch.empty(2_000_000_000, device="meta")),
        "dense tensor",
    ),
    Case(
        4,
        "sparse-tensor-of-2e9",
        replace_weight(
            lambda s: torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), size=(2_000_000_000,))
        ),
        "dense tensor",
    ),
    Case(4, "stride-0-in-state-dict-metadata", model_metadata, "model._metadata"),
    Case(4, "stride-0-under-an-unknown-key", setter("notes", value=lambda s, x: stride0()), "notes"),
    Case(4, "storage-declared-as-2e9", declared_storage, "cannot be loaded"),
    Case(
        4, "compressed-zip-entries", lambda s, x: rezip(s, x, compression=zipfile.ZIP_DEFLATED), "compressed"
    ),
    Case(
        4,
        "overlapping-zip-entries",
        lambda s, x: rezip(s, x, edit_bytes=patch_central_size),
        "add up to more bytes",
    ),
    Case(4, "zip-of-300000-entries", lambda s, x: rezip(s, x, edit_bytes=patch_entry_count), "zip entries"),
    Case(4, "pickle-nested-100000-deep", lambda s, x: rezip(s, x, edit_pkl=deep_list), "nested at most"),
    Case(
        4,
        "pickle-10-billion-references",
        setter("notes", value=lambda s, x: shared_lists()),
        "at most 1,000,000 objects",
    ),
    Case(4, "pickle-cycle", setter("notes", value=lambda s, x: cycle()), "nested at most"),
    Case(4, "integer-of-300-digits", setter("global_step", value=lambda s, x: 10**300), "global_step"),
    Case(
        4,
        "history-of-200000-epochs",
        setter("history", value=lambda s, x: [{"val/loss": 1.0}] * 200_000),
        "history",
    ),
    Case(
        4,
        "micro-splits-2e40",
        setter("position", "micro_splits", value=lambda s, x: 2**40),
        "position.micro_splits",
    ),
    Case(
        4,
        "max-length-5e6",
        setter("preprocessing", "max_length", value=lambda s, x: 5_000_000),
        "preprocessing.max_length",
        SCORES,
    ),
    Case(
        4,
        "classes-50000",
        setter("preprocessing", "targets", 0, "classes", value=lambda s, x: [f"c{i}" for i in range(50_000)]),
        "preprocessing.targets[0].classes",
        SCORES,
    ),
    Case(
        4,
        "tokenizer-regex-backtracking",
        text_preprocessing(tokenizer_with_regex()),
        "preprocessing.tokenizer_json",
        SCORES,
    ),
    Case(
        4,
        "tokenizer-ids-out-of-range",
        text_preprocessing(tokenizer_ids_out_of_range()),
        "preprocessing.tokenizer_json",
        SCORES,
    ),
    Case(
        4,
        "tokenizer-nested-100000-deep",
        text_preprocessing("[" * 100_000),
        "preprocessing.tokenizer_json",
        SCORES,
    ),
    Case(
        4,
        "num-rows-3e8",
        config(lambda c, x: c["data"].update(source="seo_pages", num_rows=300_000_000)),
        "data.num_rows",
        frozenset({"seo-eval", "resume=PATH"}),
        {"resume=PATH": "data.source"},
    ),
    Case(
        4,
        "pad-to-multiple-of-0",  # batches are cut to multiples of it
        config(lambda c, x: c["data"].update(pad_to_multiple_of=0)),
        "data.pad_to_multiple_of",
        SCORES,
    ),
    Case(4, "yaml-billion-laughs", config_text(billion_laughs), "anchors or aliases", BUILDS),
    Case(4, "interpolation-chain-2e12-characters", config_text(interpolation_chain), "interpolation", BUILDS),
    Case(
        4,
        "yaml-nested-10000-deep",
        config_text(
            lambda t, x: t.replace("  activation: relu", "  activation: " + "[" * 10_000 + "]" * 10_000)
        ),
        "nested deeper",
        BUILDS,
    ),
    Case(4, "config-of-5-mb", config_text(lambda t, x: t + "#" + "x" * 5_000_000 + "\n"), "config"),
    Case(
        4,
        "hidden-sizes-of-50000-layers",
        config_text(flow_list("hidden_sizes", ", ".join(["8"] * 50_000))),
        "model.hidden_sizes",
        BUILDS,
    ),
    Case(
        4,
        "hidden-sizes-of-5000-layers",
        config_text(flow_list("hidden_sizes", ", ".join(["8"] * 5_000))),
        "far larger",
        BUILDS,
        {"resume=PATH": "model.hidden_sizes"},
    ),
    Case(
        4,
        "a-layer-of-1e9-units",
        config_text(flow_list("hidden_sizes", "1000000000")),
        "far larger",
        BUILDS,
        {"resume=PATH": "model.hidden_sizes"},
    ),
    Case(
        4,
        "embedding-of-1e9-dimensions",
        config(lambda c, x: c["model"].update(categorical_embedding_dim=10**9)),
        "far larger",
        BUILDS,
        {"resume=PATH": "model.categorical_embedding_dim"},
    ),
]


def write_cases(tiny_run: Path, directory: Path, ctx: Ctx) -> dict[str, Path]:
    base = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({"x": WritesMarker(ctx.marker)}, directory / "evil.pkl")
    files = {}
    for case in CASES:
        state = copy.deepcopy(base)
        made = case.make(state, ctx)
        path = files[case.name] = directory / f"{case.name}.pt"
        if isinstance(made, bytes):
            path.write_bytes(made)
        else:
            torch.save(state, path)
    return files


@pytest.fixture(scope="module")
def hostile(tiny_run, tmp_path_factory) -> tuple[dict[str, Path], Ctx]:
    directory = tmp_path_factory.mktemp("hostile")
    ctx = Ctx(marker=directory / "PAYLOAD_RAN", directory=directory, table=tiny_run.parent / "pages.csv")
    return write_cases(tiny_run, directory, ctx), ctx


def composed(entrypoint: str, ctx: Ctx) -> Any:
    """The entrypoint's config, composed once (Hydra's compose takes 0.1 s): each case sets its paths."""
    if entrypoint == "seo-eval":
        return compose_config("eval", "checkpoint=x.pt", "device=cpu", "bootstrap=0", "report=false")
    if entrypoint == "seo-predict":
        return compose_config(
            "predict", "checkpoint=x.pt", f"input={ctx.table}", "output=p.csv", "device=cpu"
        )
    if entrypoint == "resume=PATH":
        return compose_train(*tiny_overrides(ctx.table), "resume=x.pt")
    return None


def attempt(entrypoint: str, base: Any, path: Path, out: Path) -> Any:
    """Run ``path`` through ``entrypoint`` as ``seo-eval checkpoint=PATH`` (and so on) would."""
    if entrypoint == "load_checkpoint":
        return load_checkpoint(path)
    cfg = copy.deepcopy(base)
    if entrypoint == "seo-eval":
        cfg.checkpoint = str(path)
        return run_eval(cfg, out)
    if entrypoint == "seo-predict":
        cfg.checkpoint, cfg.output = str(path), str(out / "p.csv")
        return run_predict(cfg)
    cfg.resume = str(path)
    return train(cfg, out)


def vm_size() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmSize:"))) * 1024


def run_cases(entrypoint: str, files: dict[str, Path], ctx: Ctx, out: Path, report: Path) -> None:
    """In the forked child: every case through ``entrypoint`` under an address-space cap; results to ``report``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + GB, hard))
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base, results = composed(entrypoint, ctx), []
    for case in CASES:
        started = time.perf_counter()
        message, outcome = "", "completed"
        try:
            with time_limit(SECONDS):
                attempt(entrypoint, base, files[case.name], out / case.name)
        except UserError as err:
            outcome, message = "refused", str(err)
        except BaseException as err:  # noqa: BLE001 - a MemoryError, a hang, a traceback: all failures
            outcome = "error"
            message = f"{type(err).__name__}: {str(err)[:500]}\n{''.join(traceback.format_exc()[-3000:])}"
        results.append(
            {
                "case": case.name,
                "outcome": outcome,
                "message": message,
                "seconds": time.perf_counter() - started,
                "marker": ctx.marker.exists(),
            }
        )
        ctx.marker.unlink(missing_ok=True)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start
    report.write_text(json.dumps({"results": results, "rss_growth": grown}))


def judge(case: Case, entrypoint: str, result: dict, path: Path) -> str | None:
    """What is wrong with one attempt, or None."""
    where = f"{case.name} via {entrypoint}"
    if result["marker"]:
        return f"{where}: the payload ran (the marker file was written)"
    if result["outcome"] == "error":
        return f"{where}: not a one-sentence refusal: {result['message']}"
    if result["seconds"] > SECONDS:
        return f"{where}: took {result['seconds']:.1f} s"
    if result["outcome"] == "completed":
        return f"{where}: completed instead of refusing" if entrypoint in case.refused_by else None
    message = result["message"]
    try:
        assert_clean_error(message)
    except AssertionError as err:
        return f"{where}: {err}"
    unnamed = case.at_restore and entrypoint == "resume=PATH" and message.startswith("the checkpoint: ")
    if str(path) not in message and not unnamed:
        return f"{where}: the message does not name the file: {message}"
    expected = case.fields.get(entrypoint, case.field)
    if entrypoint in case.refused_by and expected not in message:
        return f"{where}: the message does not name {expected!r}: {message}"
    return None


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_hostile_checkpoints_run_nothing_stay_bounded_and_are_one_sentence(
    hostile, tmp_path, cases_tried, entrypoint
):
    files, ctx = hostile
    report = tmp_path / "report.json"
    child = multiprocessing.get_context("fork").Process(
        target=run_cases, args=(entrypoint, files, ctx, tmp_path, report)
    )
    child.start()
    child.join(timeout=SECONDS * len(CASES))
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0 and report.exists(), (
        f"the child running the cases died (exit code {child.exitcode})"
    )
    outcome = json.loads(report.read_text())
    failures = []
    for case, result in zip(CASES, outcome["results"], strict=True):
        count(cases_tried, f"hostile checkpoints, class {case.kind}, via {entrypoint}", result["outcome"])
        problem = judge(case, entrypoint, result, files[case.name])
        if problem is not None:
            failures.append(problem)
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)
    assert outcome["rss_growth"] < GB, outcome["rss_growth"]


def test_the_suite_holds_at_least_40_cases_of_the_four_classes():
    kinds = [case.kind for case in CASES]
    assert len(CASES) >= 40 and {1, 2, 3, 4} == set(kinds)
    assert len({case.name for case in CASES}) == len(CASES)


def test_a_numbered_name_climbing_out_of_the_directory_never_deletes_a_file(hostile, tmp_path):
    """The manager deletes evicted numbered files by their stored names: a name from a hostile checkpoint
    must not reach ``unlink`` (before the fix, ``../../victim.pt`` was deleted on the next eviction)."""
    files, ctx = hostile
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    victim = tmp_path / "victim.pt"
    victim.write_text("keep me")
    with pytest.raises(
        UserError, match=r"checkpoints\.numbered\[0\]\.name must be the file name seo-train gives"
    ):
        state = load_checkpoint(files["numbered-file-climbing-out"])
        manager = CheckpointManager(checkpoints, save_top_k=1)
        manager.load_state_dict(state["checkpoints"])
        manager.save_epoch({"model": {}}, epoch=2, monitor="val/loss", value=0.4, improved=True)
    assert victim.read_text() == "keep me"
    assert os.listdir(checkpoints) == []


def test_the_config_payloads_run_when_hydra_builds_them(tmp_path):
    """Guards the cases from passing vacuously: Hydra's instantiate, which read checkpoints before the
    registry, does write the marker for the payload node the cases use."""
    from hydra.utils import instantiate

    ctx = Ctx(marker=tmp_path / "PAYLOAD_RAN", directory=tmp_path, table=tmp_path)
    instantiate(touch(ctx))
    assert ctx.marker.exists()


def allocate_under_the_cap(report: Path) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + GB, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        stride0().clone()  # what the first copy of a stride-0 weight would do: 8 GB
        report.write_text("allocated")
    except (MemoryError, RuntimeError) as err:
        report.write_text(type(err).__name__)


def test_the_memory_cap_stops_a_bomb_in_the_child(tmp_path):
    """Guards the 1 GB bound: under the cap the cases run with, the copy of a stride-0 view fails at once."""
    report = tmp_path / "report"
    child = multiprocessing.get_context("fork").Process(target=allocate_under_the_cap, args=(report,))
    child.start()
    child.join(timeout=60)
    assert report.read_text() in ("MemoryError", "RuntimeError")

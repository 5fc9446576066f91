"""Checkpoint files: one dict of tensors, numbers, strings, lists and dicts, written atomically.

Loading uses ``torch.load(weights_only=True)``, so a checkpoint can hold no object whose unpickling
runs code. Keys: ``format_version``, ``config`` (resolved YAML), ``preprocessing`` (plain data),
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``global_step``,
``position`` (where in the next epoch the loop stands, and its running sums), ``metrics``,
``history``, ``best``, ``early_stopping``, ``checkpoints`` (the manager's top-k list), ``rng``,
``seo_cli_version``; a calibrated checkpoint of ``seo-eval calibrate=true`` adds ``temperature``.
"""

import logging
import math
import os
import random
import struct
import tempfile
import zipfile
from collections.abc import Callable
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> "Checkpoint":
    """Load a checkpoint written by ``save_checkpoint``, every field checked by type, shape and bound.

    A checkpoint is untrusted input. Before ``torch.load`` the zip's directory is read (entries stored
    uncompressed, their sizes adding up to no more than the file); after it, the whole object is walked
    (plain data only, tensors owning their storage, at most ``MAX_OBJECTS`` objects) and each known key
    checked (``check_fields``). Keys this version does not know are ignored: nothing reads them.

    Raises:
        UserError: the path is missing or a directory, or the file is not an seo-cli checkpoint
            (truncated, foreign, holding objects that are not plain data, or a field of the wrong type,
            shape or size): one sentence naming the file and the field.
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
    if not path.is_file():  # a FIFO or a device would block or never end
        raise UserError(f"checkpoint {path} is not a regular file; give the path of a .pt file written by seo-train.")
    size = path.stat().st_size
    _check_zip(path, size)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    # On foreign bytes torch.load raises IndexError, KeyError, ... as well as unpickling errors.
    except Exception as err:  # noqa: BLE001
        if "Weights only load failed" in str(err):
            raise UserError(
                f"checkpoint {path} holds objects other than tensors and plain data (pickled code, say), "
                "so it is refused for safety; give a .pt file written by seo-train."
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"checkpoint {path} cannot be loaded as an seo-cli checkpoint ({reason[:160]}); "
            "it is truncated, corrupt, or not written by seo-train."
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise UserError(
            f"checkpoint {path} is not an seo-cli checkpoint (it lacks the keys {', '.join(REQUIRED_KEYS)})."
        )
    version = state["format_version"]
    if _is_int(version, FORMAT_VERSION + 1):  # its fields may follow other rules: not checked by these
        raise UserError(
            f"checkpoint {path} has format version {version}, newer than this seo-cli ({__version__}) reads; "
            "upgrade seo-cli."
        )
    try:
        walk_problem = _walk(state, size)
        if walk_problem is not None:
            raise Invalid(*walk_problem)
        check_fields(state)
    except Invalid as bad:
        raise UserError(f"checkpoint {path}: {bad}; use a checkpoint written by seo-train.") from None
    return Checkpoint(state, path)


class Checkpoint(dict):
    """A loaded checkpoint's fields, and the file they came from, which messages about them name."""

    def __init__(self, fields: dict[str, Any], path: Path) -> None:
        super().__init__(fields)
        self.path = path

    def replaced(self, **fields: Any) -> "Checkpoint":
        """A copy with ``fields`` set (the same file)."""
        return Checkpoint({**self, **fields}, self.path)


def _check_zip(path: Path, size: int) -> None:
    """Refuse, from the zip's directory alone, what ``torch.load`` would spend memory on: compressed entries
    (a zip bomb), entries whose sizes add up to more than the file (overlapping entries), a directory of
    millions of entries; and a file that is not a zip (torch's legacy format, or anything else).

    Raises:
        UserError: naming the file.
    """
    not_torch = UserError(
        f"checkpoint {path} is not a PyTorch checkpoint file (it is truncated, corrupt, or another "
        "format); give a .pt file written by seo-train."
    )
    with path.open("rb") as f:
        entries = _zip_entry_count(f, size)
        if entries is None:
            raise not_torch
        if entries > MAX_ZIP_ENTRIES:
            raise UserError(
                f"checkpoint {path}: the file has {entries:,} zip entries, more than the {MAX_ZIP_ENTRIES:,} "
                "seo-cli reads; use a checkpoint written by seo-train."
            )
        try:
            infos = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise not_torch from None
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
        raise UserError(
            f"checkpoint {path}: the file holds compressed zip entries, which torch.save never writes; "
            "use a checkpoint written by seo-train."
        )
    if sum(info.file_size for info in infos) > size:
        raise UserError(
            f"checkpoint {path}: its zip entries add up to more bytes than the file holds (overlapping "
            "entries); use a checkpoint written by seo-train."
        )


def _zip_entry_count(f: Any, size: int) -> int | None:
    """The entry count the zip's end record states (zip64 too), read before ``zipfile`` builds an object
    per entry; None when the file has no end record (not a zip)."""
    f.seek(max(0, size - 22 - 65535))  # the end record is 22 bytes, then a comment of at most 64 KB
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries = struct.unpack_from("<H", tail, at + 10)[0]
    if entries == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        f.seek(struct.unpack_from("<Q", tail, at - 12)[0])
        record = f.read(56)
        if len(record) < 40 or record[:4] != b"PK\x06\x06":
            return None
        entries = struct.unpack_from("<Q", record, 32)[0]
    return entries


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
        self, state: dict[str, Any], *, epoch: int, monitor: str, value: float, improved: bool, numbered: bool = True
    ) -> tuple[Path | None, Path | None]:
        """Write the files due after a validation at the end of ``epoch`` (1-based); returns (best.pt if
        written, last.pt if written). ``numbered=False`` (a validation inside an epoch): no numbered file.

        Order matters for a kill at any point: new files first, then deletions, then ``last.pt``, the
        file a resume starts from, so a resumed run redoes the epoch and rewrites the same files.
        """
        best = last = None
        evicted: list[dict[str, Any]] = []
        if numbered and self.save_top_k != 0 and epoch % self.every_n_epochs == 0 and not math.isnan(value):
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


MAX_CONFIG_BYTES = 256_000  # a resolved seo-train config is a few KB; parsing 256 KB takes about a second
MAX_CONFIG_DEPTH = 32
REQUIRED_SECTIONS = ("model", "loss", "data", "seed")


def parse_stored_config(path: Path, text: Any) -> dict[str, Any]:
    """The resolved config a checkpoint carries, as plain containers.

    seo-train stores ``OmegaConf.to_yaml(cfg, resolve=True)``: plain YAML without anchors, aliases, tags
    or interpolations. Anything else is refused before it is composed, so alias bombs, ``${...}`` chains
    and ``!!python`` tags cost nothing; the text and its nesting are capped.

    Raises:
        UserError: the config is not such YAML, or lacks the model, loss, data or seed section.
    """
    import yaml

    def refuse(reason: str) -> UserError:
        return UserError(f"checkpoint {path} holds a config seo-cli cannot read ({reason}); use a checkpoint written by seo-train.")

    if not isinstance(text, str):
        raise refuse("it is not YAML text")
    if len(text) > MAX_CONFIG_BYTES:
        raise refuse(f"it is longer than {MAX_CONFIG_BYTES:,} characters")
    if "${" in text:
        raise refuse("it holds an interpolation ${...}, which a resolved config never does")
    depth = 0
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: ten times faster than Python's
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise refuse("it uses YAML anchors or aliases")
            if getattr(event, "tag", None) is not None:  # the parser reports only tags written out
                raise refuse("it uses a YAML tag")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_CONFIG_DEPTH:
                raise refuse(f"it is nested deeper than {MAX_CONFIG_DEPTH} levels")
        config = yaml.load(text, Loader=loader)  # a safe loader: plain data only
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a number too long to convert
        raise refuse(f"it is not valid YAML: {str(err).strip().splitlines()[0][:120]}") from None
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise refuse("it is not a mapping of names")
    missing = [key for key in REQUIRED_SECTIONS if key not in config]
    if missing:
        raise refuse(f"it lacks the {', '.join(missing)} section")
    if not isinstance(config["seed"], int) or isinstance(config["seed"], bool) or not 0 <= config["seed"] < 2**32:
        raise refuse("its seed is not a whole number between 0 and 2**32 - 1")
    for key in ("model", "loss", "data"):
        if not isinstance(config[key], dict):
            raise refuse(f"its {key} section is not a mapping")
    return config


# --- What a checkpoint file may hold ---------------------------------------------------------------------
# A checkpoint is untrusted input (a file people pass around). The bounds below are far above anything
# seo-train writes and far below what would exhaust memory or time; the README's threat model lists them.
MAX_ZIP_ENTRIES = 200_000  # torch.save writes one entry per tensor, plus six
MAX_OBJECTS = (
    1_000_000  # numbers, strings, lists, mappings and tensors, counted each time they are referenced
)
MAX_ITEMS = 100_000  # entries of one list or mapping: weights, epochs of history, numbered files, classes
MAX_NAME = 1_000  # characters of a key: a weight's, a metric's or a setting's name
MAX_INT = 2**62  # steps, counts, epochs
MAX_DEPTH = 64  # levels of nesting (seo-train writes 5)
MAX_RANKS = 65_536  # DDP processes
MAX_PARAM_GROUPS = 1_000
# What resume=PATH puts back besides the weights; eval and predict need only REQUIRED_KEYS.
RESUME_KEYS = ("optimizer", "position", "rng")


class Invalid(Exception):
    """A stored field that is not what seo-train writes; ``str()`` reads '<field> must be <what>'."""

    def __init__(self, field: str, must: str) -> None:
        super().__init__(f"{field} must be {must}")


def _need(ok: bool, field: str, must: str) -> None:
    if not ok:
        raise Invalid(field, must)


def _shown(key: Any) -> str:
    """A key read from the file, safe to put in a one-line message."""
    text = str(key)
    return text if len(text) <= 60 and text.isprintable() else repr(text[:60])


def _is_int(value: Any, low: int = 0, high: int = MAX_INT) -> bool:
    return type(value) is int and low <= value <= high  # not a bool, not a tensor


def _is_number(value: Any) -> bool:
    return type(value) is float or _is_int(value, -MAX_INT)


def _is_name(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_NAME


def _is_numbers(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) <= MAX_ITEMS and all(map(_is_number, value))


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_name(k) and _is_number(v) for k, v in value.items())


def _is_history(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_ITEMS and all(map(_is_metrics, value))


def _rule(test: Callable[[Any], bool], must: str) -> Callable[[Any, str], None]:
    def check(value: Any, field: str) -> None:
        _need(test(value), field, must)

    return check


COUNT = _rule(_is_int, "a whole number of at least 0 (not a tensor)")
NUMBER = _rule(_is_number, "a number (not a tensor)")
NUMBERS = _rule(_is_numbers, f"a list of at most {MAX_ITEMS:,} numbers")
METRICS = _rule(_is_metrics, "a mapping of metric names to numbers")
HISTORY = _rule(
    _is_history, f"a list of at most {MAX_ITEMS:,} mappings of metric names to numbers, one per epoch"
)


def _walk(state: dict[str, Any], file_size: int) -> tuple[str, str] | None:
    """(field, what it must be) for the first object in ``state`` that is not plain data or a tensor owning
    its storage, or None. Iterative, so deep nesting costs no stack; bounded, so a structure referencing one
    list a million times (or itself) stops at ``MAX_OBJECTS`` or ``MAX_DEPTH``."""
    stack: list[tuple[Any, str, int]] = [(value, _shown(key), 1) for key, value in state.items()]
    storages: dict[int, int] = {}  # data pointer -> bytes: tied weights share one storage
    objects = 0
    while stack:
        value, field, depth = stack.pop()
        objects += 1
        if objects > MAX_OBJECTS:
            return (
                "the file",
                f"made of at most {MAX_OBJECTS:,} objects (numbers, strings, lists, mappings, tensors)",
            )
        if depth > MAX_DEPTH:
            return field, f"nested at most {MAX_DEPTH} levels deep"
        kind = type(value)
        if value is None or kind is bool or kind is float or kind is str:
            continue
        if kind is int:
            if not -MAX_INT <= value <= MAX_INT:
                return field, "made of numbers between -2**62 and 2**62"
            continue
        named = depth < 4  # deeper objects are named by their ancestor: a name per object would cost time
        if isinstance(value, torch.Tensor):
            problem = _tensor_problem(value)
            if problem is not None:
                return field, problem
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            children = list(vars(value).items())  # the attributes a Parameter may carry
        elif isinstance(value, dict):
            if len(value) > MAX_ITEMS:
                return field, f"a mapping of at most {MAX_ITEMS:,} entries"
            if not all(_is_name(k) or _is_int(k) for k in value):
                return field, "a mapping keyed by names or ids"
            # An OrderedDict's attributes (a state dict's _metadata) reach load_state_dict too.
            children = [*value.items(), *getattr(value, "__dict__", {}).items()]
        elif isinstance(value, list | tuple):
            if len(value) > MAX_ITEMS:
                return field, f"a list of at most {MAX_ITEMS:,} items"
            children = list(enumerate(value)) if named else [(0, v) for v in value]
            stack += [(v, f"{field}[{i}]" if named else field, depth + 1) for i, v in children]
            continue
        else:
            return field, f"plain data (numbers, strings, lists, mappings, tensors), not a {kind.__name__}"
        stack += [(v, f"{field}.{_shown(k)}" if named else field, depth + 1) for k, v in children]
    if sum(storages.values()) > file_size:
        return "its tensors", "no larger together than the file"
    return None


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    """What the stored tensor must be and is not, or None. A view (stride 0, expanded, offset, overlapping)
    may claim billions of elements over a few bytes; the first copy of it would allocate them."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return f"a plain tensor, not a {type(tensor).__name__}"
    if (
        tensor.layout != torch.strided
        or tensor.is_quantized
        or tensor.is_nested
        or tensor.device.type == "meta"
    ):
        return "a dense tensor holding its data"
    if (
        tensor.storage_offset() != 0
        or not tensor.is_contiguous()
        or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()
    ):
        return "a tensor owning its storage (not a stride-0, expanded, offset or overlapping view)"
    return None


def check_fields(state: dict[str, Any]) -> None:
    """Check every key of ``state`` this version knows by type, shape and bound (after ``_walk``).

    Raises:
        Invalid: the first field that is not what seo-train writes.
    """
    for key, value in state.items():
        check = FIELDS.get(key)
        if check is not None:
            check(value, key)
    position = state.get("position")
    for key in ("epoch", "global_step"):
        if key in state and isinstance(position, dict) and key in position and position[key] != state[key]:
            raise Invalid(f"position.{key}", f"{key} itself ({state[key]})")


def _check_mapping(
    value: Any, field: str, rules: dict[str, Callable[[Any, str], None]], required: Any = None
) -> None:
    """``value`` is a mapping of the keys of ``rules`` (all, or at least ``required``), each passing its rule."""
    required = set(rules) if required is None else set(required)
    keys = set(value) if isinstance(value, dict) else set()
    _need(
        isinstance(value, dict) and required <= keys <= set(rules), field, f"a mapping of {', '.join(rules)}"
    )
    for key, rule in rules.items():
        if key in value:
            rule(value[key], f"{field}.{key}")


def _check_weights(value: Any, field: str) -> None:
    _need(
        isinstance(value, dict) and len(value) <= MAX_ITEMS and all(map(_is_name, value)),
        field,
        f"a mapping of at most {MAX_ITEMS:,} weight names to tensors",
    )
    for name, tensor in value.items():
        # Integer tensors too: a user's model may hold BatchNorm's batch counter.
        _need(
            isinstance(tensor, torch.Tensor) and not tensor.is_complex(),
            f"{field}.{_shown(name)}",
            "a tensor of real numbers",
        )


def _is_setting(value: Any) -> bool:
    """An optimizer setting: lr, betas, weight_decay, foreach, ..."""
    if value is None or type(value) is bool or _is_number(value) or _is_name(value):
        return True
    return isinstance(value, list | tuple) and len(value) <= 16 and all(map(_is_number, value))


def _check_optimizer(value: Any, field: str) -> None:
    """torch's ``Optimizer.state_dict()``: ``{"state": {id: {name: tensor | number}}, "param_groups": [...]}``."""
    _need(
        isinstance(value, dict) and set(value) == {"state", "param_groups"},
        field,
        "torch's optimizer state (a mapping of state and param_groups)",
    )
    groups = value["param_groups"]
    _need(
        isinstance(groups, list) and 0 < len(groups) <= MAX_PARAM_GROUPS,
        f"{field}.param_groups",
        f"a list of 1 to {MAX_PARAM_GROUPS:,} parameter groups",
    )
    ids: list[int] = []
    for i, group in enumerate(groups):
        where = f"{field}.param_groups[{i}]"
        _need(isinstance(group, dict) and all(map(_is_name, group)), where, "a mapping of setting names")
        params = group.get("params")
        _need(
            isinstance(params, list) and all(_is_int(p, 0, 2**31) for p in params),
            f"{where}.params",
            "a list of parameter ids (whole numbers)",
        )
        ids += params
        for key, setting in group.items():
            _need(
                key == "params" or _is_setting(setting),
                f"{where}.{_shown(key)}",
                "a number, a boolean, a short name, null or a short list of numbers",
            )
    _need(len(set(ids)) == len(ids), f"{field}.param_groups", "groups that list each parameter id once")
    state, known = value["state"], set(ids)
    _need(
        isinstance(state, dict) and all(type(k) is int and k in known for k in state),
        f"{field}.state",
        "a mapping of the parameter ids of param_groups to their state",
    )
    for pid, entry in state.items():
        where = f"{field}.state[{pid}]"
        _need(
            isinstance(entry, dict) and all(map(_is_name, entry)),
            where,
            "a mapping of names to tensors or numbers",
        )
        for key, item in entry.items():
            ok = item is None or type(item) is bool or _is_number(item)
            ok = ok or isinstance(item, torch.Tensor) and not item.is_complex()
            _need(ok, f"{where}.{_shown(key)}", "a tensor of real numbers, a number or null")


def _is_plain_state(value: Any) -> bool:
    """A scheduler's or scaler's ``state_dict()``: a mapping of names (its structure is compared on resume)."""
    return value is None or isinstance(value, dict) and all(map(_is_name, value))


def _is_numbered_name(name: Any, epoch: Any, value: Any) -> bool:
    """Exactly what ``numbered_name`` gives for this epoch and value: the manager deletes files by these names,
    so one must never hold a path separator (``../../x``) or be longer than a file name may be."""
    if type(name) is not str or not _is_int(epoch) or not _is_number(value) or len(name.encode()) > 255:
        return False
    head, tail = f"epoch={epoch:03d}-", f"={value:.4f}.pt"
    monitor = name[len(head) : -len(tail)]
    if not (name.startswith(head) and name.endswith(tail) and monitor) or any(c in monitor for c in "/\\\0"):
        return False
    return numbered_name(epoch, monitor, value) == name


def _check_checkpoints(value: Any, field: str) -> None:
    _need(
        isinstance(value, dict) and set(value) == {"numbered"} and isinstance(value["numbered"], list),
        field,
        "a mapping with the list numbered",
    )
    for i, entry in enumerate(value["numbered"]):
        where = f"{field}.numbered[{i}]"
        _check_mapping(
            entry, where, {"name": _rule(_is_name, "a file name"), "value": NUMBER, "epoch": COUNT}
        )
        _need(
            _is_numbered_name(entry["name"], entry["epoch"], entry["value"]),
            f"{where}.name",
            f"the file name seo-train gives that epoch and value ({numbered_name(entry['epoch'], 'val/loss', entry['value'])}, "
            "say), with no path separator",
        )


def _accepted(put: Callable[[], Any]) -> bool:
    """Whether a generator of its own (not the process's) takes the state ``put`` gives it."""
    try:
        put()
    except (ValueError, TypeError, RuntimeError, OverflowError):
        return False
    return True


def _check_rng(value: Any, field: str) -> None:
    """``rng_state()``: Python's, numpy's, torch's (and CUDA's) generator states, each tried on a generator of its
    own, so a state the library would refuse is refused here, in one sentence."""
    _need(
        isinstance(value, dict)
        and {"python", "numpy", "torch"} <= set(value) <= {"python", "numpy", "torch", "cuda"},
        field,
        "a mapping of the python, numpy, torch (and cuda) generator states",
    )
    python = value["python"]
    internal = python[1] if isinstance(python, list | tuple) and len(python) == 3 else None
    ok = (
        isinstance(internal, list | tuple)
        and python[0] == 3
        and len(internal) == 625
        and all(_is_int(x, 0, 2**32 - 1) for x in internal[:624])
        and _is_int(internal[624], 0, 624)
        and (python[2] is None or type(python[2]) is float)
    )
    _need(
        ok and _accepted(lambda: random.Random().setstate((3, tuple(internal), python[2]))),
        f"{field}.python",
        "Python's random state: 3, then 624 whole numbers below 2**32 and a position up to 624, then null or a float",
    )
    key_rule = _rule(
        lambda t: (
            isinstance(t, torch.Tensor)
            and t.dtype == torch.int64
            and tuple(t.shape) == (624,)
            and bool(((t >= 0) & (t < 2**32)).all())
        ),
        "624 whole numbers below 2**32 (an int64 tensor)",
    )
    rules = {
        "key": key_rule,
        "pos": _rule(lambda v: _is_int(v, 0, 624), "a whole number from 0 to 624"),
        "has_gauss": _rule(lambda v: v in (0, 1) and type(v) in (int, bool), "0 or 1"),
        "cached_gaussian": NUMBER,
    }
    _check_mapping(value["numpy"], f"{field}.numpy", rules, required=("key", "pos"))
    size = torch.get_rng_state().numel()
    state = value["torch"]
    _need(
        isinstance(state, torch.Tensor)
        and state.dtype == torch.uint8
        and tuple(state.shape) == (size,)
        and _accepted(lambda: torch.Generator().set_state(state.cpu())),
        f"{field}.torch",
        f"torch's CPU generator state ({size} bytes that torch.set_rng_state accepts)",
    )
    cuda = value.get("cuda", [])
    _need(
        isinstance(cuda, list)
        and len(cuda) <= 1024
        and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and t.numel() <= 1024
            for t in cuda
        ),
        f"{field}.cuda",
        "a list of CUDA generator states (small uint8 tensors), one per GPU",
    )


def _check_rng_ranks(value: Any, field: str) -> None:
    _need(
        value is None or isinstance(value, list) and 0 < len(value) <= MAX_RANKS,
        field,
        "null or a list of generator states, one per rank",
    )
    for rank, state in enumerate(value or []):
        _check_rng(state, f"{field}[{rank}]")


def _is_class_counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _is_name(name) and isinstance(counts, list) and len(counts) <= MAX_ITEMS and all(map(_is_int, counts))
        for name, counts in value.items()
    )


POSITION = {  # trainer.LoopState's fields (a test keeps the two lists equal)
    "epoch": COUNT,
    "global_step": COUNT,
    "batches_done": COUNT,
    "epoch_loss": NUMBER,
    "epoch_rows": COUNT,
    "window_losses": NUMBERS,
    "window_grad_norms": NUMBERS,
    "history": HISTORY,
    "best_value": NUMBER,
    "best_epoch": COUNT,
    "best_step": COUNT,
    "best_metrics": METRICS,
    "micro_splits": _rule(
        lambda v: _is_int(v, 1, 2**30) and v & (v - 1) == 0, "a power of two from 1 to 2**30"
    ),
    "fp16_skipped_steps": COUNT,
    "fp16_skip_streak": COUNT,
    "last_finite_loss": _rule(
        lambda v: (
            v is None or isinstance(v, list | tuple) and len(v) == 2 and _is_int(v[0]) and _is_number(v[1])
        ),
        "null or a pair of a step and a loss",
    ),
}
EARLY_STOPPING = {"best": NUMBER, "bad_epochs": COUNT, "stopped_epoch": COUNT}  # EarlyStopping.state_dict()
FIELDS: dict[str, Callable[[Any, str], None]] = {
    "format_version": _rule(
        lambda v: _is_int(v, 1, FORMAT_VERSION), f"a whole number from 1 to {FORMAT_VERSION}"
    ),
    "seo_cli_version": _rule(lambda v: type(v) is str and len(v) <= 100, "a version string"),
    "config": _rule(
        lambda v: type(v) is str and len(v) <= MAX_CONFIG_BYTES,
        f"the resolved config as YAML text of at most {MAX_CONFIG_BYTES:,} characters",
    ),
    "preprocessing": _rule(lambda v: isinstance(v, dict), "a mapping (the fitted preprocessing)"),
    "model": _check_weights,
    "training_model": _check_weights,
    "optimizer": _check_optimizer,
    "scheduler": _rule(_is_plain_state, "null or a scheduler's state (a mapping of names)"),
    "scaler": _rule(
        lambda v: (
            v is None or isinstance(v, dict) and all(_is_name(k) and _is_number(x) for k, x in v.items())
        ),
        "null or a mapping of names to numbers (the GradScaler's state)",
    ),
    "epoch": COUNT,
    "global_step": COUNT,
    "total_steps": COUNT,
    "position": lambda v, f: _check_mapping(v, f, POSITION, required=()),
    "metrics": METRICS,
    "history": HISTORY,
    "best": lambda v, f: _check_mapping(v, f, {"value": NUMBER, "epoch": COUNT}),
    "early_stopping": lambda v, f: v is None or _check_mapping(v, f, EARLY_STOPPING),
    "checkpoints": _check_checkpoints,
    "rng": _check_rng,
    "rng_ranks": _check_rng_ranks,
    "world_size": _rule(lambda v: _is_int(v, 1, MAX_RANKS), f"a whole number from 1 to {MAX_RANKS:,}"),
    "class_counts": _rule(
        _is_class_counts, "a mapping of target names to lists of whole numbers of at least 0"
    ),    # seo-eval calibrate=true's temperature per classification target; its bounds and targets are checked
    # against the preprocessing by seo_cli.loading.
    "temperature": _rule(
        lambda v: isinstance(v, dict) and len(v) <= MAX_ITEMS and all(_is_name(k) and _is_number(x) for k, x in v.items()),
        "a mapping of target names to numbers (the temperatures of seo-eval calibrate=true)",
    ),
}


def check_resumable(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    where: str = "the checkpoint",
) -> None:
    """What ``load_checkpoint`` cannot check without this run's objects, before anything is put back: the
    weights fit the model, the optimizer state its parameters and settings, the scheduler's and the scaler's
    state the structure of the ones built.

    Raises:
        UserError: one sentence naming ``where`` and the field.
    """
    try:
        for key in RESUME_KEYS:
            _need(key in state, key, "present to resume from it (a run's last.pt holds it)")
        expected = {name: tuple(t.shape) for name, t in unwrap_model(model).state_dict().items()}
        for key in ("model", "training_model"):
            if key in state:
                _check_fits(state[key], expected, key)
        _check_optimizer_fits(state["optimizer"], optimizer)
        if scheduler is not None and state.get("scheduler") is not None:
            _check_like(state["scheduler"], scheduler.state_dict(), "scheduler")
        if scaler.is_enabled() and state.get("scaler"):
            _check_like(state["scaler"], scaler.state_dict(), "scaler")
            _need(
                all(math.isfinite(v) and v >= 0 for v in state["scaler"].values()),
                "scaler",
                "finite numbers of at least 0",
            )
    except Invalid as bad:
        raise UserError(
            f"{where}: {bad}; resume from a checkpoint of this run's model, optimizer and scheduler settings."
        ) from None


def _check_fits(weights: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], field: str) -> None:
    missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing:
        raise Invalid(field, f"the weights of this run's model (it lacks {_shown(missing[0])})")
    if extra:
        raise Invalid(
            field, f"the weights of this run's model (it has the unknown weight {_shown(extra[0])})"
        )
    for name, shape in expected.items():
        got = tuple(weights[name].shape)
        _need(
            got == shape,
            f"{field}.{_shown(name)}",
            f"of shape {list(shape)}, as this run's model has (it is {list(got)})",
        )


def _check_optimizer_fits(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Saved groups and states line up with this run's parameters the way ``Optimizer.load_state_dict`` maps
    them (the i-th saved id to the i-th parameter), with the shapes of those parameters."""
    from seo_cli.registry import REGISTRY  # a late import: registry imports the models, which import little

    built = optimizer.state_dict()["param_groups"]
    groups = saved["param_groups"]
    _need(
        len(groups) == len(built),
        "optimizer.param_groups",
        f"{len(built)} parameter group(s), as this run's optimizer has",
    )
    shapes: dict[int, tuple[int, ...]] = {}
    for i, (group, mine, live) in enumerate(zip(groups, built, optimizer.param_groups, strict=True)):
        where = f"optimizer.param_groups[{i}]"
        _need(
            len(group["params"]) == len(mine["params"]),
            f"{where}.params",
            f"{len(mine['params'])} parameter ids, as this run's optimizer has",
        )
        settings = set(mine) - {"params"}
        _need(
            set(group) - {"params"} == settings,
            where,
            f"the settings of this run's optimizer ({', '.join(sorted(settings))})",
        )
        for key in sorted(settings):
            _check_like(group[key], mine[key], f"{where}.{key}")
        shapes.update({pid: tuple(p.shape) for pid, p in zip(group["params"], live["params"], strict=True)})
    # torch's own optimizers keep per-parameter tensors of the parameter's shape (and 0-d step counters); a
    # user's optimizer (allowed_targets) may keep factored ones, which only it can check.
    if type(optimizer) not in REGISTRY["optimizer"].values():
        return
    for pid, entry in saved["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                _need(
                    tuple(value.shape) == shapes[pid],
                    f"optimizer.state[{pid}].{_shown(key)}",
                    f"of its parameter's shape {list(shapes[pid])} (it is {list(value.shape)})",
                )


def _check_like(saved: Any, built: Any, field: str) -> None:
    """``saved`` has the structure of ``built``, this run's own state: the same keys and list lengths, numbers
    where it has numbers, its very strings. Recursion follows ``built``, which is shallow and trusted."""
    if isinstance(built, dict):
        _need(
            isinstance(saved, dict) and set(saved) == set(built),
            field,
            f"a mapping of {', '.join(map(str, built))}",
        )
        for key in built:
            _check_like(saved[key], built[key], f"{field}.{key}")
    elif isinstance(built, list | tuple):
        _need(
            isinstance(saved, list | tuple) and len(saved) == len(built),
            field,
            f"a list of {len(built)} items",
        )
        for i, (item, mine) in enumerate(zip(saved, built, strict=True)):
            _check_like(item, mine, f"{field}[{i}]")
    elif built is None or type(built) is bool:  # foreach=None saved as False, say
        _need(saved is None or type(saved) is bool or _is_number(saved), field, "a boolean, a number or null")
    elif isinstance(built, int | float):
        _need(_is_number(saved), field, "a number")
    elif isinstance(built, str):
        _need(saved == built, field, f"{built!r}, as this run has")
    elif isinstance(built, torch.Tensor):  # a learning rate kept as a tensor (capturable optimizers)
        ok = _is_number(saved) if built.numel() == 1 else False
        _need(
            ok or isinstance(saved, torch.Tensor) and saved.shape == built.shape,
            field,
            f"a tensor of shape {list(built.shape)}",
        )

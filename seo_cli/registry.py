"""The exact classes a config may build, and the two ways of building them.

A ``_target_`` names a class or function by its dotted path. Hydra would import any such path, so
seo-cli looks every one up in the tables below (class objects, never a name prefix, never an import
of the name), plus exactly the classes the user names on the command line with ``allowed_targets``.

- The command line and ``--config-dir`` are trusted: ``build`` checks every ``_target_`` at every depth
  of the resolved node against the tables, then hands the node to ``hydra.utils.instantiate``.
- Files are not (checkpoints): ``build_from_file`` never calls ``instantiate`` nor imports anything. It
  looks the top-level ``_target_`` up, accepts only plain data (numbers, strings, booleans, null, and
  lists or mappings of those) for the constructor's own arguments, checks each against the
  constructor's type hints, and calls the class object itself.
"""

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from seo_cli import loggers, losses, schedulers
from seo_cli.errors import UserError
from seo_cli.models.mlp import MLP
from seo_cli.models.pretrained import PretrainedText
from seo_cli.models.seo_multitask import SEOMultitask
from seo_cli.models.textcnn import TextCNN
from seo_cli.models.transformer import Transformer


def _table(*objects: Callable) -> dict[str, Callable]:
    return {f"{obj.__module__}.{obj.__qualname__}": obj for obj in objects}


_OPTIMIZERS = (
    torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad,
    torch.optim.Adadelta, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
)  # fmt: skip
# What each group may build. Optimizers are named as users write them (torch.optim.AdamW), not by the
# module that defines them.
REGISTRY: dict[str, dict[str, Callable]] = {
    "model": _table(MLP, TextCNN, Transformer, SEOMultitask, PretrainedText),
    "loss": _table(losses.MultiTargetLoss),
    "optimizer": {f"torch.optim.{cls.__name__}": cls for cls in _OPTIMIZERS},
    "scheduler": _table(
        schedulers.cosine, schedulers.warmup_cosine, schedulers.step, schedulers.plateau
    ),
    "logger": _table(loggers.TensorBoardLogger, loggers.CSVLogger, loggers.WandbLogger, loggers.MLflowLogger),
}
# Keys Hydra's instantiate reads itself.
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# Bounds on plain data taken from a file: a constructor argument is a handful of numbers or names.
MAX_ITEMS, MAX_DEPTH, MAX_TEXT = 10_000, 8, 10_000


def allowed_classes(names: Iterable[str]) -> dict[str, Callable]:
    """The user's own classes, named exactly on the command line with ``allowed_targets`` (trusted
    input: this is the one place a name is imported).

    Raises:
        UserError: a name that does not import, or that names a module rather than a class or function.
    """
    from hydra.utils import get_object

    found: dict[str, Callable] = {}
    for name in names:
        try:
            obj = get_object(str(name))
        except Exception as err:  # noqa: BLE001 - any import failure is the user's name being wrong
            raise UserError(
                f"allowed_targets names {name!r}, which cannot be imported ({type(err).__name__}); give the "
                "dotted path of a class, e.g. allowed_targets=[my_pkg.models.MyModel]."
            ) from None
        if isinstance(obj, types.ModuleType) or not callable(obj):
            raise UserError(
                f"allowed_targets names {name!r}, which is a module, not a class or function; name each class "
                f"exactly, e.g. allowed_targets=[{name}.MyModel]."
            )
        found[str(name)] = obj
    return found


def lookup(target: Any, key: str, group: str | None, allowed: dict[str, Callable]) -> Callable:
    """The object ``target`` names: in ``group``'s table (any table when None) or among ``allowed``.

    Raises:
        UserError: ``target`` is not a string, or names nothing registered.
    """
    tables = [REGISTRY[group]] if group is not None else list(REGISTRY.values())
    if isinstance(target, str):
        for table in (*tables, allowed):
            if target in table:
                return table[target]
    name = str(target)[:200]
    known = f" for {group} (those are: {', '.join(sorted(REGISTRY[group]))})" if group is not None else ""
    raise UserError(
        f"{key}={name!r} is not a class seo-cli builds{known}; if you trust it, name it exactly with "
        f"allowed_targets=[{name}]."
    )


def check_targets(node: Any, key: str, group: str | None, allowed: dict[str, Callable]) -> list[str]:
    """Problems with the ``_target_`` entries of ``node`` (a resolved container) at every depth: the top
    one must be registered for ``group``, nested ones for any group; Hydra builds nested nodes too."""
    problems: list[str] = []
    stack: list[tuple[Any, str, str | None]] = [(node, key, group)]
    while stack:
        value, where, table = stack.pop()
        if isinstance(value, dict):
            if "_target_" in value:
                try:
                    lookup(value["_target_"], f"{where}._target_", table, allowed)
                except UserError as err:
                    problems.append(str(err))
            stack += [(v, f"{where}.{k}", None) for k, v in value.items() if k != "_target_"]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]", None) for i, v in enumerate(value)]
    return problems


def build(node: DictConfig, key: str, allowed: dict[str, Callable], **runtime: Any) -> Any:
    """Build a node of the trusted command line with ``instantiate``, its targets checked first; runtime
    dependencies come from the call site (``build(cfg.optimizer, "optimizer", allowed, params=...)``).

    A ``UserError`` or a value error the built class raises (a bad ``model.num_heads``, torch's "Invalid
    momentum value") reaches the user as one sentence naming ``key``, not inside Hydra's multi-line
    InstantiationException.

    Raises:
        UserError: an unregistered target, or a value the class refused.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    # Plain containers, the schema's choices as their strings: what a component keeps (a plateau
    # scheduler's mode, say) must be plain data in a checkpoint.
    plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    problems = check_targets(plain, key, key.split(".")[0], allowed)
    if problems:
        raise UserError("\n".join(problems))
    try:
        return instantiate(plain, **runtime, _convert_="object")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, ValueError | TypeError | ZeroDivisionError | RuntimeError):
            raise UserError(refusal(key, plain, cause)) from None
        raise


def refusal(key: str, node: dict[str, Any], err: BaseException) -> str:
    """One sentence for a value a constructor refused with an error of its own (torch's "Invalid momentum
    value: -1.0"): the argument it names when its name is in the reason, else the node."""
    reason = _first_line(err)
    named = [name for name in node if not name.startswith("_") and name.lower().rstrip("s") in reason.lower()]
    where = f"{key}.{named[0]}" if named else key
    shown = f"{where}={node[named[0]]}" if named else where
    return f"{shown} is refused by {node.get('_target_', key)} ({reason}); change {where}."


def build_from_file(
    node: Any, key: str, group: str, allowed: dict[str, Callable], **runtime: Any
) -> Any:
    """Build a node read from an untrusted file: no ``instantiate``, no import, plain data only.

    Args:
        node: the stored node, plain containers (parsed by ``checkpoint.parse_stored_config``).
        key: names the node in messages, e.g. ``model in checkpoint best.pt``.

    Raises:
        UserError: an unregistered target, a key that is not an argument of it, a value that is not plain
            data of the argument's type, or a value the class refused.
    """
    if not isinstance(node, dict) or "_target_" not in node:
        raise UserError(f"{key} has no _target_; use a checkpoint written by seo-train.")
    fn = lookup(node["_target_"], f"{key}._target_", group, allowed)
    params, hints = _signature(fn)
    params = params or {}  # not introspectable: no argument can be checked, so none is taken from a file
    kwargs = {}
    for name, value in node.items():
        if name == "_target_":
            continue
        if name not in params or name == "**" or name in runtime or name.startswith("_"):
            raise UserError(f"{key}.{str(name)[:100]} is not an argument of {node['_target_']}; use an unmodified checkpoint.")
        problem = plain_data_problem(value)
        if problem is None and name in hints and not matches(value, hints[name]):
            problem = f"should be {type_name(hints[name])}"
        if problem is not None:
            raise UserError(f"{key}.{name} {problem}; use an unmodified checkpoint written by seo-train.")
        kwargs[name] = value
    try:
        return fn(**runtime, **kwargs)
    # A class's own UserError names the knob to change on a command line; here the value came from the file.
    except (UserError, ValueError, TypeError, ZeroDivisionError, RuntimeError, OverflowError) as err:
        raise UserError(f"{key} could not be built ({_first_line(err).rstrip('.')}); use an unmodified checkpoint.") from None


def plain_data_problem(value: Any) -> str | None:
    """What makes ``value`` other than small plain data (no mapping may carry a ``_target_`` or other
    ``_``-key), or None. Walked without recursion, so a deep structure costs no stack."""
    stack, items = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > MAX_ITEMS or depth > MAX_DEPTH:
            return f"is larger than {MAX_ITEMS} items or deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str) or k.startswith("_"):
                    return f"holds the key {str(k)[:40]!r}, which is not a plain name"
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
        elif isinstance(item, str):
            if len(item) > MAX_TEXT:
                return f"holds a string longer than {MAX_TEXT} characters"
        elif item is not None and not isinstance(item, bool | int | float):
            return f"holds a {type(item).__name__}, which is not plain data"
    return None


def check_arguments(node: DictConfig, key: str, fn: Callable, runtime: set[str]) -> list[str]:
    """Unknown keys, missing required keys and values of the wrong type (``model.dropout=high``) of a
    command-line node, against ``fn``'s signature: errors at start-up rather than inside a constructor."""
    params, hints = _signature(fn)
    if params is None:
        return []  # not introspectable (a C extension, say): the constructor will check
    takes_any = params.pop("**", False)
    problems = []
    for name in node:
        if name in HYDRA_KEYS:
            continue
        if name not in params:
            if not takes_any:
                problems.append(
                    f"{key}.{name} is not an argument of {node._target_}; its arguments are: "
                    f"{', '.join(n for n in params if n not in runtime and n != 'self')}."
                )
            continue
        value = node[name]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if name in hints and not matches(value, hints[name]):
            problems.append(f"{key}.{name}={value!r} should be {type_name(hints[name])}.")
    for name, p in params.items():
        if p.default is p.empty and name not in node and name not in runtime and name != "self":
            problems.append(f"{key}.{name} is required by {node._target_}; set it, e.g. {key}.{name}=...")
    return problems


def _signature(fn: Callable) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The named parameters of ``fn`` (a ``"**"`` entry when it takes any keyword) and its type hints."""
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except (TypeError, ValueError, NameError):
        return None, {}
    params: dict[str, Any] = {
        n: p for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        params["**"] = True
    return params, hints


def matches(value: Any, hint: Any) -> bool:
    """Whether plain ``value`` fits type hint ``hint`` (containers are checked item by item)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else Any
        return all(matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, dict):
            return False
        item = args[1] if len(args) == 2 else Any
        return all(isinstance(k, str) and matches(v, item) for k, v in value.items())
    if isinstance(hint, type) and issubclass(hint, str):  # an Enum of strings, say
        return isinstance(value, str)
    return True  # tensors, modules, callables: not expressible in YAML, left to the constructor


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__

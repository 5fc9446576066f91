"""3. Hostile checkpoints: pickled code is refused and never runs; a config naming a ``_target_`` outside
the allow-list is refused before anything is built; truncated and random bytes are a clear error.

Each payload writes a marker file when it runs; wherever one could run, the test checks the marker is
absent before anything else. The payload is first shown to be live: an unsafe ``pickle.loads`` of the
same object does write its file.
"""

import copy
import os
import pickle
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.commands import run_command

from seo_cli.checkpoint import load_checkpoint
from seo_cli.errors import UserError
from seo_cli.evaluate import load_trained, run_eval
from seo_cli.losses import MultiTargetLoss
from seo_cli.models.mlp import MLP
from seo_cli.predict import run_predict
from seo_cli.train import train

from .support import assert_clean_error, compose_config, compose_train, tiny_overrides

pytestmark = pytest.mark.reliability

CPU = torch.device("cpu")


class WritesMarker:
    """Unpickling this runs ``exec``, which writes ``path``: the shape of every pickle exploit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('the payload ran')",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def refusal(attempt, marker: Path) -> str:
    """The message of the UserError ``attempt()`` raises; first of all, the payload must not have run."""
    try:
        attempt()
    except Exception as err:  # noqa: BLE001 - classified below, after the side effect is checked
        error = err
    else:
        error = None
    assert not marker.exists(), f"the hostile checkpoint ran code: {marker} was written"
    assert isinstance(error, UserError), f"expected a UserError, got {error!r}"
    assert_clean_error(str(error))
    return str(error)


def test_the_payload_is_live_under_an_unsafe_load(tmp_path):
    """Guards the tests below from passing vacuously: unpickled without restriction, it writes its file."""
    path = tmp_path / "proof"
    pickle.loads(pickle.dumps(WritesMarker(path)))
    assert path.read_text() == "the payload ran"


def best_state(tiny_run: Path) -> dict:
    return torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)


def pickled_code_files(tiny_run: Path, directory: Path, marker: Path) -> dict[str, Path]:
    """The payload inside a real checkpoint (as an extra key, and deep in the preprocessing), in the
    legacy non-zip format, and as a bare pickle."""
    files = {}
    state = best_state(tiny_run)
    files["extra-key"] = directory / "extra_key.pt"
    torch.save({**state, "notes": WritesMarker(marker)}, files["extra-key"])
    nested = copy.deepcopy(state)
    nested["preprocessing"]["numeric_mean"] = [WritesMarker(marker)]
    files["in-preprocessing"] = directory / "in_preprocessing.pt"
    torch.save(nested, files["in-preprocessing"])
    files["legacy-format"] = directory / "legacy.pt"
    torch.save(
        {**state, "notes": WritesMarker(marker)}, files["legacy-format"], _use_new_zipfile_serialization=False
    )
    files["bare-pickle"] = directory / "bare.pt"
    files["bare-pickle"].write_bytes(pickle.dumps(WritesMarker(marker)))
    return files


PICKLED = ["extra-key", "in-preprocessing", "legacy-format", "bare-pickle"]


@pytest.mark.parametrize("kind", PICKLED)
def test_pickled_code_is_refused_by_every_entrypoint_and_never_runs(tiny_run, tmp_path, marker, kind):
    path = pickled_code_files(tiny_run, tmp_path, marker)[kind]
    table = tiny_run.parent / "pages.csv"
    attempts = {
        "load_checkpoint": lambda: load_checkpoint(path),
        "seo-eval": lambda: run_eval(
            compose_config("eval", f"checkpoint={path}", "device=cpu", "bootstrap=0", "report=false"),
            tmp_path / "eval",
        ),
        "seo-predict": lambda: run_predict(
            compose_config(
                "predict",
                f"checkpoint={path}",
                f"input={table}",
                f"output={tmp_path / 'p.csv'}",
                "device=cpu",
            )
        ),
        "resume=PATH": lambda: train(compose_train(*tiny_overrides(table), f"resume={path}"), tmp_path / "r"),
    }
    for entrypoint, attempt in attempts.items():
        message = refusal(attempt, marker)
        assert f"checkpoint {path} " in message, (entrypoint, message)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r" / "checkpoints").exists()


def test_seo_eval_on_pickled_code_exits_1_with_one_line_and_runs_nothing(tiny_run, tmp_path, marker):
    """seo-eval's console script in this process (tests/helpers/commands.py): the payload would run here,
    and the marker says it did not. (seo-eval's exit code as a process: test_evaluate.py.)"""
    path = pickled_code_files(tiny_run, tmp_path, marker)["extra-key"]
    result = run_command("evaluate", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'out'}")
    output = result.output
    assert result.code == 1, output[-3000:]
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if f"checkpoint {path} holds objects other than" in line]
    assert len(lines) == 1, output[-3000:]
    assert not marker.exists()


# --- _target_ in the checkpoint's config -------------------------------------------------------------


def with_config(tiny_run: Path, path: Path, edit) -> Path:
    """best.pt with its stored config (a YAML string) passed through ``edit``."""
    state = best_state(tiny_run)
    state["config"] = edit(state["config"])
    torch.save(state, path)
    return path


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """What got called of the checkpoint's model and loss classes and of the foreign targets below: the
    refusal must come before any of them."""
    calls: list[str] = []

    def recorder(name):
        return lambda *args, **kwargs: calls.append(name)

    for owner, name in [
        (os, "system"),
        (subprocess, "Popen"),
        (shutil, "rmtree"),
        (MLP, "__init__"),
        (MultiTargetLoss, "__init__"),
    ]:
        monkeypatch.setattr(owner, name, recorder(f"{owner.__name__}.{name}"))
    return calls


@pytest.mark.parametrize(
    "old, new",
    [
        ("seo_cli.models.mlp.MLP", "os.system"),
        ("seo_cli.models.mlp.MLP", "subprocess.Popen"),
        ("seo_cli.models.mlp.MLP", "builtins.exec"),
        ("seo_cli.models.mlp.MLP", "seo_cli_lookalike.models.MLP"),
        ("seo_cli.losses.MultiTargetLoss", "shutil.rmtree"),
    ],
)
def test_a_target_outside_the_allow_list_is_refused_before_anything_is_built(
    tiny_run, tmp_path, built, old, new
):
    path = with_config(tiny_run, tmp_path / "foreign.pt", lambda text: text.replace(old, new))
    with pytest.raises(UserError) as err:
        load_trained(path, CPU, [])
    assert_clean_error(str(err.value))
    assert f"checkpoint {path}: " in str(err.value)
    assert f"_target_={new!r} is not a class seo-cli builds" in str(err.value)
    assert built == []


def nested_payloads(marker: Path, evil: Path) -> dict[str, tuple[str, str]]:
    """(line of the stored config, what replaces it): a ``_target_`` one level down, which Hydra's
    recursive instantiate calls before the allowed top-level class; and allowed-prefix targets that
    read, write or run files."""
    return {
        "nested-open": (
            "  activation: relu",
            f"  activation:\n    _target_: builtins.open\n    _args_: ['{marker}', 'w']",
        ),
        "nested-copy": (
            "  activation: relu",
            f"  activation:\n    _target_: shutil.copy\n    _args_: ['{evil}', '{marker}']",
        ),
        "nested-torch-load": (
            "  _target_: seo_cli.losses.MultiTargetLoss",
            "  _target_: seo_cli.losses.MultiTargetLoss\n"
            f"  weights:\n    _target_: torch.load\n    f: {evil}\n    weights_only: false",
        ),
        "torch-hub-load": (
            "  _target_: seo_cli.models.mlp.MLP",
            f"  _target_: torch.hub.load\n  repo_or_dir: {marker.parent / 'hub'}\n  model: build\n  source: local\n"
            "  trust_repo: true\n  skip_validation: true",
        ),
    }


@pytest.mark.parametrize("payload", ["nested-open", "nested-copy", "nested-torch-load", "torch-hub-load"])
def test_a_checkpoint_config_cannot_build_anything_but_seo_cli_models_and_losses(
    tiny_run, tmp_path, marker, payload
):
    """seo-eval and seo-predict build the model and loss a checkpoint names: every ``_target_`` in those
    nodes, nested ones included, must be checked, and 'torch' as a prefix must not admit torch.load or
    torch.hub.load."""
    evil = tmp_path / "evil.pt"
    torch.save({"x": WritesMarker(marker)}, evil)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').write('the payload ran')\n\ndef build(**kwargs):\n    raise ValueError\n"
    )
    old, new = nested_payloads(marker, evil)[payload]
    state_config = best_state(tiny_run)["config"]
    assert old in state_config.splitlines(), f"the stored config has no line {old!r}"
    path = with_config(tiny_run, tmp_path / "hostile.pt", lambda text: text.replace(old, new, 1))
    table = tiny_run.parent / "pages.csv"
    output = tmp_path / "p.csv"
    message = refusal(lambda: load_trained(path, CPU, []), marker)
    assert "_target_" in message
    message = refusal(
        lambda: run_predict(
            compose_config(
                "predict", f"checkpoint={path}", f"input={table}", f"output={output}", "device=cpu"
            )
        ),
        marker,
    )
    assert "_target_" in message and not output.exists()


@pytest.mark.parametrize(
    "config",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "model: [unclosed",
        "just a string",
        "model:\n  _target_: seo_cli.models.mlp.MLP\n",  # no loss, no data
    ],
    ids=["yaml-python-tag", "not-yaml", "not-a-mapping", "missing-nodes"],
)
def test_a_malformed_stored_config_is_one_sentence(tiny_run, tmp_path, marker, config):
    path = with_config(tiny_run, tmp_path / "odd.pt", lambda _: config.format(marker=marker))
    assert str(path) in refusal(lambda: load_trained(path, CPU, []), marker)


def test_weights_that_do_not_fit_the_stored_config_are_one_sentence(tiny_run, tmp_path):
    state = best_state(tiny_run)
    state["model"] = {k: v for k, v in state["model"].items() if not k.endswith("bias")}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_trained(path, CPU, [])
    assert_clean_error(str(err.value))
    assert str(path) in str(err.value)


# --- truncated and random bytes ------------------------------------------------------------------------


def damaged(tiny_run: Path, directory: Path) -> dict[str, Path]:
    data = (tiny_run / "checkpoints" / "best.pt").read_bytes()
    rng = random.Random(7)
    contents = {
        "first-half": data[: len(data) // 2],
        "last-byte-cut": data[:-1],
        "empty": b"",
        "random-bytes": rng.randbytes(4096),
        "zip-magic-then-noise": b"PK\x03\x04" + rng.randbytes(4096),
        "one-flipped-byte-in-the-middle": data[: len(data) // 2]
        + bytes([data[len(data) // 2] ^ 0xFF])
        + data[len(data) // 2 + 1 :],
    }
    files = {}
    for name, content in contents.items():
        files[name] = directory / f"{name}.pt"
        files[name].write_bytes(content)
    return files


DAMAGE = [
    "first-half",
    "last-byte-cut",
    "empty",
    "random-bytes",
    "zip-magic-then-noise",
    "one-flipped-byte-in-the-middle",
]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_truncated_or_random_file_is_a_clear_error_naming_it(tiny_run, tmp_path, kind):
    path = damaged(tiny_run, tmp_path)[kind]
    table = tiny_run.parent / "pages.csv"
    for attempt in (
        lambda: load_checkpoint(path),
        lambda: load_trained(path, CPU, []),
        lambda: train(compose_train(*tiny_overrides(table), f"resume={path}"), tmp_path / "r"),
    ):
        try:
            attempt()
        except UserError as err:
            assert_clean_error(str(err))
            assert f"checkpoint {path} " in str(err)
        else:
            # A flipped byte inside a tensor's data changes a weight, not the file's structure, and
            # torch.load does not check the zip's CRC: such a file loads. Nothing else may.
            assert kind == "one-flipped-byte-in-the-middle", f"{kind} loaded without an error"


def test_random_bytes_never_load_and_never_crash(tmp_path):
    """200 random files of random lengths, some starting with the zip or pickle magic bytes."""
    rng = random.Random(11)
    prefixes = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"]
    for i in range(200):
        path = tmp_path / f"{i}.pt"
        path.write_bytes(rng.choice(prefixes) + rng.randbytes(rng.randint(0, 3000)))
        with pytest.raises(UserError) as err:
            load_checkpoint(path)
        assert_clean_error(str(err.value))
        assert f"checkpoint {path} " in str(err.value) or f"{path} is not an seo-cli checkpoint" in str(
            err.value
        )

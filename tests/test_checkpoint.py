"""Checkpoint files: round trip, atomic writes, clear errors for bad files, no code run on load."""

import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from seo_cli import __version__
from seo_cli.checkpoint import (
    FORMAT_VERSION,
    check_target_allowed,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    unwrap_state_dict,
)
from seo_cli.errors import UserError


def make_state(value: float = 1.0) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return {
        "config": "epochs: 3\nmodel:\n  _target_: seo_cli.models.mlp.MLP\n",
        "preprocessing": {"numeric_mean": [0.5, 1.5], "categories": {"cms": ["wp"]}, "max_length": 8},
        "model": model.state_dict(),
        "epoch": 2,
        "global_step": 40,
        "metrics": {"val/loss": value},
        "history": [{"epoch": 1, "val/loss": 0.9}, {"epoch": 2, "val/loss": value}],
        "rng": rng_state(),
    }


def test_round_trip_with_weights_only(tmp_path):
    state = make_state(0.75)
    path = save_checkpoint(state, tmp_path / "ckpt" / "best.pt")  # parents are created
    assert path == tmp_path / "ckpt" / "best.pt"
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["seo_cli_version"] == __version__
    assert loaded["config"] == state["config"]
    assert loaded["preprocessing"] == state["preprocessing"]
    assert loaded["metrics"] == {"val/loss": 0.75}
    assert loaded["history"] == state["history"]
    assert (loaded["epoch"], loaded["global_step"]) == (2, 40)
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(loaded["rng"]["numpy"]["key"], state["rng"]["numpy"]["key"])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    # The numpy state is complete: restoring it repeats the draws.
    np_state = loaded["rng"]["numpy"]
    expected = np.random.rand(3)
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"]))
    assert np.array_equal(np.random.rand(3), expected)


def test_save_leaves_only_the_checkpoint(tmp_path):
    save_checkpoint(make_state(), tmp_path / "last.pt")
    save_checkpoint(make_state(0.5), tmp_path / "last.pt")  # overwrite
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["metrics"] == {"val/loss": 0.5}


def test_failed_write_keeps_the_previous_file_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(make_state(0.25), path)
    before = path.read_bytes()

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(UserError, match="No space left"):
        save_checkpoint(make_state(0.5), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["best.pt"]
    assert path.read_bytes() == before
    assert load_checkpoint(path)["metrics"] == {"val/loss": 0.25}


def test_truncated_file_is_a_user_error(tmp_path):
    path = save_checkpoint(make_state(), tmp_path / "best.pt")
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(
            UserError,
            match=rf"checkpoint {re.escape(str(path))} (is not a PyTorch checkpoint file|cannot be loaded).*truncated",
        ):
            load_checkpoint(path)


# Seed 17 gives bytes on which torch.load raises IndexError rather than an unpickling error.
@pytest.mark.parametrize("seed", [0, 1, 17])
def test_random_bytes_are_a_user_error(tmp_path, seed):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(256))
    with pytest.raises(UserError, match=r"is not a PyTorch checkpoint file"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [{"model": {}}, [1, 2, 3], torch.ones(2)], ids=["dict", "list", "tensor"])
def test_torch_file_without_the_required_keys_is_a_user_error(tmp_path, content):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(
        UserError, match=r"is not an seo-cli checkpoint \(it lacks the keys format_version, config"
    ):
        load_checkpoint(path)


def test_newer_format_version_is_a_user_error(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "config": "", "preprocessing": {}, "model": {}}, path)
    with pytest.raises(UserError, match=rf"format version {FORMAT_VERSION + 1}, newer.*upgrade seo-cli"):
        load_checkpoint(path)


def test_directory_is_a_user_error_suggesting_a_file_in_it(tmp_path):
    with pytest.raises(UserError, match=r"is a directory; give a .pt file in it, e.g. checkpoint=.*best.pt"):
        load_checkpoint(tmp_path)


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=rf"checkpoint {re.escape(str(tmp_path / 'no.pt'))} does not exist"):
        load_checkpoint(tmp_path / "no.pt")


def write_marker(path: str) -> str:
    with open(path, "w") as f:
        f.write("code ran")
    return path


class Payload:
    """Unpickles by calling ``write_marker``: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return write_marker, (self.marker,)


def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": "", "preprocessing": {}, "model": Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(
        UserError, match=r"holds objects other than tensors and plain data.*refused for safety"
    ):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is live: a full unpickle does run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize(
    "target",
    ["seo_cli.models.mlp.MLP", "seo_cli", "torch.optim.AdamW", "my_pkg.models.Net"],
)
def test_target_inside_the_allowed_prefixes_passes(target):
    assert check_target_allowed(target, "model._target_", ["seo_cli", "torch", "my_pkg."]) is None


@pytest.mark.parametrize(
    "target", ["os.system", "seo_cli_evil.Model", "torchvision.models.resnet18", "builtins.eval"]
)
def test_target_outside_the_allowed_prefixes_is_a_user_error(target):
    with pytest.raises(UserError) as err:
        check_target_allowed(target, "model._target_", ["seo_cli", "torch"])
    message = str(err.value)
    assert f"model._target_={target!r} is outside the modules seo-cli builds from (seo_cli, torch)" in message
    assert f"allowed_targets=[{target.split('.')[0]}]" in message


def test_unwrap_state_dict_strips_the_compile_prefix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    compiled = torch.compile(model, backend="eager")
    compiled(torch.randn(2, 3))
    assert list(compiled.state_dict()) == [
        "_orig_mod.0.weight",
        "_orig_mod.0.bias",
        "_orig_mod.2.weight",
        "_orig_mod.2.bias",
    ]
    unwrapped = unwrap_state_dict(compiled)
    assert list(unwrapped) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for key, value in model.state_dict().items():
        assert torch.equal(unwrapped[key], value)
    nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).load_state_dict(unwrapped)  # strict


def test_unwrap_state_dict_strips_data_parallel_but_not_a_submodule_named_module():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)
            self.head = nn.Linear(2, 1)

    net = Net()
    assert list(unwrap_state_dict(net)) == ["module.weight", "module.bias", "head.weight", "head.bias"]
    assert list(unwrap_state_dict(nn.DataParallel(net))) == list(net.state_dict())
    assert list(unwrap_state_dict(nn.Linear(2, 2))) == ["weight", "bias"]

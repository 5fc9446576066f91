"""Checkpoint files: round trip, atomic writes, clear errors for bad files, no code run on load."""

import math
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from seo_cli import __version__
from seo_cli.checkpoint import (
    FORMAT_VERSION,
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


# --- Every stored field checked by type, shape and bound (issue 16) ----------------------------------------


def saved(tmp_path, **fields) -> "os.PathLike":
    """A checkpoint of make_state() with ``fields`` replaced."""
    path = tmp_path / "hostile.pt"
    torch.save({"format_version": FORMAT_VERSION, **make_state(), **fields}, path)
    return path


def refusal(path) -> str:
    """The one-sentence message of load_checkpoint, which names the file first."""
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path}: ") and "\n" not in message, message
    assert message.endswith("; use a checkpoint written by seo-train."), message
    return message


def test_the_position_and_early_stopping_rules_list_exactly_the_fields_the_trainer_saves():
    import dataclasses

    from seo_cli.checkpoint import EARLY_STOPPING, POSITION
    from seo_cli.early_stopping import EarlyStopping
    from seo_cli.trainer import LoopState

    assert set(POSITION) == {f.name for f in dataclasses.fields(LoopState)}
    assert set(EARLY_STOPPING) == set(EarlyStopping(monitor="val/loss").state_dict())


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"epoch": torch.tensor(2)}, "epoch must be a whole number of at least 0 (not a tensor)"),
        ({"global_step": True}, "global_step must be a whole number of at least 0 (not a tensor)"),
        ({"global_step": 10**30}, "global_step must be made of numbers between -2**62 and 2**62"),
        ({"metrics": {"val/loss": "low"}}, "metrics must be a mapping of metric names to numbers"),
        ({"world_size": 0}, "world_size must be a whole number from 1 to 65,536"),
        ({"position": {"record_epoch": 1}}, "position must be a mapping of epoch, global_step,"),
        ({"position": {"micro_splits": 3}}, "position.micro_splits must be a power of two from 1 to 2**30"),
        ({"position": {"epoch": 5}}, "position.epoch must be epoch itself (2)"),
        (
            {"early_stopping": {"best": 0.5}},
            "early_stopping must be a mapping of best, bad_epochs, stopped_epoch",
        ),
        (
            {"class_counts": {"intent": [3, -1]}},
            "class_counts must be a mapping of target names to lists of whole",
        ),
        (
            {"optimizer": {"state": {}, "param_groups": [{"params": [0], "lr": {"_target_": "os.system"}}]}},
            "optimizer.param_groups[0].lr must be a number, a boolean",
        ),
        (
            {"optimizer": {"state": {3: {}}, "param_groups": [{"params": [0]}]}},
            "optimizer.state must be a mapping of the parameter ids of param_groups",
        ),
        ({"model": {"w": torch.zeros(1).expand(10**6)}}, "model.w must be a tensor owning its storage"),
        ({"model": {"w": torch.zeros(10, 10)[2:]}}, "model.w must be a tensor owning its storage"),
        ({"model": {"w": torch.zeros(2, dtype=torch.complex64)}}, "model.w must be a tensor of real numbers"),
        ({"notes": torch.zeros(1).expand(10**6)}, "notes must be a tensor owning its storage"),
        ({"notes": {1.5: "a float key"}}, "notes must be a mapping keyed by names or ids"),
        (
            {"notes": {1, 2}},
            "notes must be plain data (numbers, strings, lists, mappings, tensors), not a set",
        ),
    ],
    ids=lambda value: str(value)[:40],
)
def test_a_field_of_the_wrong_type_shape_or_size_is_one_sentence_naming_the_file_and_the_field(
    tmp_path, fields, expected
):
    assert expected in refusal(saved(tmp_path, **fields))


def test_keys_this_version_does_not_know_are_ignored_but_must_be_plain_data(tmp_path):
    assert load_checkpoint(saved(tmp_path, notes={"added by": "a later seo-cli", "n": [1, 2.5]}))["notes"][
        "n"
    ] == [1, 2.5]


@pytest.mark.parametrize(
    "part, value, expected",
    [
        ("torch", lambda s: torch.zeros_like(s["torch"]), "rng.torch must be torch's CPU generator state"),
        ("torch", lambda s: s["torch"][:100].clone(), "rng.torch must be torch's CPU generator state"),
        ("python", lambda s: (3, s["python"][1][:600], None), "rng.python must be Python's random state"),
        ("python", lambda s: (3, s["python"][1], "gauss"), "rng.python must be Python's random state"),
        ("numpy", lambda s: {**s["numpy"], "pos": 700}, "rng.numpy.pos must be a whole number from 0 to 624"),
        (
            "numpy",
            lambda s: {**s["numpy"], "key": s["numpy"]["key"][:10].clone()},
            "rng.numpy.key must be 624 whole",
        ),
        (
            "cuda",
            lambda s: [torch.zeros(10**5, dtype=torch.uint8)],
            "rng.cuda must be a list of CUDA generator states",
        ),
    ],
)
def test_a_bad_rng_state_is_refused_without_touching_the_process_generators(tmp_path, part, value, expected):
    rng = rng_state()
    rng[part] = value(rng)
    before = torch.get_rng_state()
    assert expected in refusal(saved(tmp_path, rng=rng))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "name",
    [
        "../../victim.pt",
        "/etc/passwd",
        "epoch=001-val_loss/../../x=0.5000.pt",
        "epoch=001-val_loss=0.5000.pt/..",
        "epoch=002-val_loss=0.5000.pt",
        "epoch=001-val_loss=0.4999.pt",
        "epoch=001-=0.5000.pt",
        "x" * 300,
    ],
)
def test_a_numbered_file_name_must_be_the_one_seo_train_gives_its_epoch_and_value(tmp_path, name):
    """The manager deletes evicted numbered files by these names: none may leave the checkpoint directory."""
    message = refusal(saved(tmp_path, checkpoints={"numbered": [{"name": name, "value": 0.5, "epoch": 1}]}))
    assert (
        "checkpoints.numbered[0].name must be the file name seo-train gives that epoch and value" in message
    )


def test_numbered_names_of_odd_metric_names_load(tmp_path):
    from seo_cli.checkpoint import numbered_name

    entries = [
        {"name": numbered_name(epoch, monitor, value), "value": value, "epoch": epoch}
        for epoch, monitor, value in [
            (3, "val/intent accuracy (%)", 0.5),
            (1200, "val/a..b/f1", 1 / 3),
            (7, "val/loss", math.inf),
        ]
    ]
    assert (
        load_checkpoint(saved(tmp_path, checkpoints={"numbered": entries}))["checkpoints"]["numbered"]
        == entries
    )


def test_zip_entries_must_be_stored_uncompressed_and_fit_in_the_file(tmp_path):
    import zipfile

    path = save_checkpoint(make_state(), tmp_path / "plain.pt")
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert "the file holds compressed zip entries" in refusal(packed)


# --- What a resumed run checks against the objects it built ------------------------------------------------


def resumable(steps: int = 1):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.ones(4, 3)).sum().backward()
        optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "position": {},
        "rng": rng_state(),
    }
    return state, model, optimizer, scheduler, scaler


def resume_refusal(state, model, optimizer, scheduler, scaler) -> str:
    from seo_cli.checkpoint import check_resumable

    with pytest.raises(UserError) as err:
        check_resumable(state, model, optimizer, scheduler, scaler, where="checkpoint last.pt")
    message = str(err.value)
    assert message.startswith("checkpoint last.pt: ") and "\n" not in message, message
    return message


def test_a_checkpoint_of_this_runs_objects_is_resumable():
    from seo_cli.checkpoint import check_resumable

    check_resumable(*resumable())


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(5)),
            "optimizer.state[0].exp_avg must be of its parameter's shape [2, 3] (it is [5])",
        ),
        (
            lambda s: s["optimizer"]["param_groups"].append(
                dict(s["optimizer"]["param_groups"][0], params=[])
            ),
            "optimizer.param_groups must be 1 parameter group(s), as this run's optimizer has",
        ),
        (
            lambda s: s["optimizer"]["param_groups"][0]["params"].pop(),
            "optimizer.param_groups[0].params must be 2 parameter ids",
        ),
        (
            lambda s: s["optimizer"]["param_groups"][0].update(betas="high"),
            "optimizer.param_groups[0].betas must be a list of 2 items",
        ),
        (
            lambda s: s["model"].update(weight=torch.zeros(3, 2)),
            "model.weight must be of shape [2, 3], as this run's model has (it is [3, 2])",
        ),
        (lambda s: s["model"].pop("bias"), "model must be the weights of this run's model (it lacks bias)"),
        (
            lambda s: s.update(scheduler={"_target_": "os.system"}),
            "scheduler must be a mapping of T_max, eta_min",
        ),
        (lambda s: s["scheduler"].update(T_max="10"), "scheduler.T_max must be a number"),
        (lambda s: s["scaler"].update(scale=math.nan), "scaler must be finite numbers of at least 0"),
        (lambda s: s.pop("rng"), "rng must be present to resume from it"),
    ],
)
def test_state_that_does_not_fit_this_runs_objects_is_one_sentence_naming_the_field(edit, expected):
    state, *objects = resumable()
    edit(state)
    assert expected in resume_refusal(state, *objects)


# --- Stored preprocessing ----------------------------------------------------------------------------------


def fitted_preprocessing() -> dict:
    import pandas as pd

    from seo_cli.data.preprocess import Preprocessor
    from seo_cli.data.spec import Target

    frame = pd.DataFrame(
        {
            "title": [f"page {i} about seo topic {i % 5}" for i in range(40)],
            "words": np.arange(40.0),
            "cms": ["wp", "drupal"] * 20,
            "intent": ["buy", "learn"] * 20,
            "ctr": np.linspace(0.1, 0.9, 40),
        }
    )
    return Preprocessor.fit(
        frame,
        text_columns=["title"],
        numeric_columns=["words"],
        categorical_columns=["cms"],
        targets=[Target("intent", "classification"), Target("ctr", "regression")],
        max_length=16,
        vocab_size=60,
    ).to_state()


def test_stored_preprocessing_round_trips():
    from seo_cli.data.preprocess import Preprocessor

    state = fitted_preprocessing()
    assert Preprocessor.from_state(state, "checkpoint best.pt").to_state() == state


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda s: s.update(numeric_mean=[0.0, 1.0]),
            "preprocessing.numeric_mean must be 1 finite numbers, one per numeric column",
        ),
        (
            lambda s: s.update(numeric_scale=[-1.0]),
            "preprocessing.numeric_scale must be 1 finite numbers above 0",
        ),
        (
            lambda s: s.update(numeric_fill=[math.nan]),
            "preprocessing.numeric_fill must be empty or 1 finite numbers",
        ),
        (
            lambda s: s.update(max_length=5_000_000),
            "preprocessing.max_length must be a whole number from 1 to 8192",
        ),
        (
            lambda s: s.update(max_length=16.0),
            "preprocessing.max_length must be a whole number from 1 to 8192",
        ),
        (
            lambda s: s.update(categories={}),
            "preprocessing.categories must be a mapping of exactly the categorical columns",
        ),
        (
            lambda s: s["categories"].update(cms="wp"),
            "preprocessing.categories.'cms' must be a list of at most",
        ),
        (
            lambda s: s.update(tokenizer_json="{not json"),
            "preprocessing.tokenizer_json must be the kind of tokenizer seo-train fits (it does not load",
        ),
        (
            lambda s: s.update(tokenizer_json=""),
            "preprocessing.tokenizer_json must be a tokenizer exactly when there are text columns",
        ),
        (
            lambda s: s["targets"][0].update(type="ordinal"),
            "preprocessing.targets[0].type must be classification, regression, rate, multilabel or ranking",
        ),
        (
            lambda s: s["targets"][0].update(classes=["buy", "buy"]),
            "preprocessing.targets[0].classes must be a list of 1 to 10,000 distinct",
        ),
        (
            lambda s: s["targets"][1].update(std=0.0),
            "preprocessing.targets[1].std must be a finite number above 0",
        ),
        (
            lambda s: s["targets"][1].update(name="intent"),
            "preprocessing.targets[1].name must be a target name, each once",
        ),
        (lambda s: s.update(_target_="os.system"), "preprocessing must be a mapping of "),
        (lambda s: s.pop("targets"), "preprocessing.targets must be present"),
    ],
)
def test_stored_preprocessing_of_the_wrong_type_shape_or_size_is_one_sentence(edit, expected):
    from seo_cli.data.preprocess import Preprocessor

    state = fitted_preprocessing()
    edit(state)
    with pytest.raises(UserError) as err:
        Preprocessor.from_state(state, "checkpoint best.pt")
    message = str(err.value)
    assert message.startswith("checkpoint best.pt: ") and "\n" not in message
    assert expected in message, message


def test_a_tokenizer_with_another_pipeline_is_refused():
    """A stored Replace or Split step carries a regular expression that may backtrack for ever on new rows."""
    import json

    from seo_cli.data.preprocess import Preprocessor

    state = fitted_preprocessing()
    spec = json.loads(state["tokenizer_json"])
    spec["normalizer"] = {"type": "Replace", "pattern": {"Regex": "(a+)+$"}, "content": "b"}
    state["tokenizer_json"] = json.dumps(spec)
    with pytest.raises(
        UserError,
        match=r"preprocessing.tokenizer_json must be the kind of tokenizer seo-train fits \(its normalizer differs\)",
    ):
        Preprocessor.from_state(state, "checkpoint best.pt")

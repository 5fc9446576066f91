"""Start-up checks: component nodes against their signatures, cross-field rules, all problems at once."""

import re
import sys

import pytest
from omegaconf import OmegaConf

from seo_cli.errors import UserError
from seo_cli.validation import check_component, check_run_length, check_train_config

MLP = "seo_cli.models.mlp.MLP"


def problems_of(node: dict, key: str = "model", allowed: dict | None = None) -> list[str]:
    return check_component(OmegaConf.create(node), key, key, allowed or {})


def test_valid_node_has_no_problems():
    assert problems_of({"_target_": MLP, "hidden_sizes": [8], "dropout": 0.2, "activation": "gelu"}) == []
    node = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0}
    assert problems_of(node, "optimizer") == []


def test_unknown_key_names_it_and_lists_the_valid_arguments():
    assert problems_of({"_target_": MLP, "hidden_size": [8]}) == [
        f"model.hidden_size is not an argument of {MLP}; its arguments are: "
        "hidden_sizes, dropout, activation, categorical_embedding_dim."  # runtime inputs/heads left out
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("dropout", "high", "model.dropout='high' should be float."),
        ("categorical_embedding_dim", 2.5, "model.categorical_embedding_dim=2.5 should be int."),
        ("categorical_embedding_dim", True, "model.categorical_embedding_dim=True should be int."),
        ("activation", 3, "model.activation=3 should be str."),
        ("hidden_sizes", 64, "model.hidden_sizes=64 should be Sequence."),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(key, value, expected):
    assert problems_of({"_target_": MLP, key: value}) == [expected]


def test_int_is_accepted_where_a_float_is_expected():
    assert problems_of({"_target_": MLP, "dropout": 0}) == []


def test_missing_required_argument_is_named():
    node = {"_target_": "seo_cli.schedulers.step", "gamma": 0.5}
    assert problems_of(node, "scheduler") == [
        "scheduler.step_epochs is required by seo_cli.schedulers.step; set it, e.g. scheduler.step_epochs=..."
    ]


def test_a_target_outside_the_registry_is_refused_before_import():
    sys.modules.pop("json.tool", None)
    problems = problems_of({"_target_": "json.tool.main"})
    assert len(problems) == 1
    assert problems[0].startswith("model._target_='json.tool.main' is not a class seo-cli builds for model (those are: ")
    assert problems[0].endswith("if you trust it, name it exactly with allowed_targets=[json.tool.main].")
    assert "json.tool" not in sys.modules  # refused by name: nothing was imported


@pytest.mark.parametrize(
    "target",
    [
        "seo_cli.checkpoint.Path.write_text",  # a name a seo_cli module happens to import
        "seo_cli.checkpoint.torch.load",
        "seo_cli.models",  # a prefix of registered names
        "torch.load",
        "torch.optim.Adam.__init__",
        "seo_cli.models.mlp.MLP.__init__",
    ],
)
def test_only_exact_registered_names_pass_never_a_prefix_or_an_attribute_path(target):
    assert problems_of({"_target_": target})[0].startswith(f"model._target_={target!r} is not a class seo-cli builds")


def test_nested_targets_must_be_registered_too():
    node = {"_target_": MLP, "activation": {"_target_": "pathlib.Path.write_text", "_args_": ["x", "y"]}}
    assert problems_of(node) == [
        "model.activation._target_='pathlib.Path.write_text' is not a class seo-cli builds; if you trust it, "
        "name it exactly with allowed_targets=[pathlib.Path.write_text]."
    ]


def test_a_registered_target_of_another_group_is_refused():
    assert problems_of({"_target_": "torch.optim.AdamW"})[0].startswith("model._target_='torch.optim.AdamW' is not a class")


def test_node_without_target_is_named():
    assert problems_of({"dropout": 0.1}) == [
        "model has no _target_; name the class or function that builds it, "
        "e.g. model._target_=torch.optim.AdamW."
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=mlp", "optimizer=sgd", "scheduler=plateau", "loss=focal", "logger=none", "device=cpu"],
        ["model=textcnn", "optimizer=rmsprop", "scheduler=step", "loss=huber"],
        [
            "model=transformer",
            "optimizer=adam",
            "scheduler=cosine",
            "loss=multitask",
            "+loss.weights.ctr=2.0",
        ],
        ["trainer.monitor=val/intent/f1_macro", "trainer.mode=max", "objective=val/ctr/r2"],
    ],
    ids=["defaults", "mlp-sgd-plateau", "textcnn-step", "transformer-cosine", "monitor-max"],
)
def test_shipped_options_pass(compose_train, overrides):
    check_train_config(compose_train(*overrides))


def test_every_problem_is_reported_together(compose_train):
    cfg = compose_train(
        "model.dropout=high",
        "trainer.monitor=val/nope",
        "data.numeric_columns=[word_count,ctr]",
        "data.val_fraction=0.5",
        "data.test_fraction=0.5",
        "epochs=0",
    )
    with pytest.raises(UserError) as err:
        check_train_config(cfg)
    lines = str(err.value).splitlines()
    assert lines[0] == "model.dropout='high' should be float."
    expected = [
        "column 'ctr' is in both data.numeric_columns and data.targets; give each column one role.",
        "data.val_fraction + data.test_fraction must be below 1 so rows remain for training.",
        "epochs=0 must be at least 1.",
    ]
    assert all(line in lines for line in expected)
    monitor = [
        line for line in lines if line.startswith("trainer.monitor='val/nope' is not a metric this run logs")
    ]
    assert len(monitor) == 1 and "val/intent/accuracy" in monitor[0] and "val/ctr/r2" in monitor[0]
    assert len(lines) == 5


def test_monitor_must_be_a_logged_metric(compose_train):
    with pytest.raises(
        UserError,
        match=r"^trainer.monitor='val/intent/acc' is not a metric this run logs; use one of: "
        r"val/loss, val/intent/loss, val/intent/accuracy",
    ):
        check_train_config(compose_train("trainer.monitor=val/intent/acc"))


def test_plateau_monitor_must_be_a_logged_metric(compose_train):
    cfg = compose_train("scheduler=plateau", "scheduler.monitor=val/clicks")
    with pytest.raises(
        UserError, match=r"^scheduler.monitor='val/clicks' is not a metric this run logs; the plateau"
    ):
        check_train_config(cfg)


def test_mode_min_with_an_accuracy_monitor_is_refused(compose_train):
    cfg = compose_train("trainer.monitor=val/intent/accuracy")
    with pytest.raises(
        UserError,
        match=r"^trainer.monitor=val/intent/accuracy grows as the model improves; "
        r"set trainer.mode=max.$",
    ):
        check_train_config(cfg)


def test_column_in_two_roles_is_refused(compose_train):
    cfg = compose_train("data.categorical_columns=[cms,title]")
    message = (
        "column 'title' is in both data.text_columns and data.categorical_columns; give each column one role."
    )
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        check_train_config(cfg)


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.7, 0.4)])
def test_fractions_summing_to_one_or_more_are_refused(compose_train, val, test):
    cfg = compose_train(f"data.val_fraction={val}", f"data.test_fraction={test}")
    with pytest.raises(UserError, match=r"^data.val_fraction \+ data.test_fraction must be below 1"):
        check_train_config(cfg)


def test_loss_weights_must_name_targets(compose_train):
    cfg = compose_train("loss=multitask", "+loss.weights.clicks=2.0")
    with pytest.raises(
        UserError,
        match=r"^loss.weights names clicks, which is not a target; the targets are intent, quality, ctr, "
        r"position.$",
    ):
        check_train_config(cfg)


def test_fractions_are_ignored_with_a_split_column(compose_train):
    cfg = compose_train("data.split_column=part", "data.val_fraction=0.6", "data.test_fraction=0.6")
    check_train_config(cfg)


def test_a_component_outside_the_registry_is_reported_unless_allowed_by_its_exact_name(compose_train):
    drop = ["~optimizer.lr", "~optimizer.weight_decay", "~optimizer.betas"]
    cfg = compose_train("optimizer._target_=json.loads", *drop)
    with pytest.raises(UserError, match=r"^optimizer._target_='json.loads' is not a class seo-cli builds"):
        check_train_config(cfg)
    with pytest.raises(UserError, match=r"^allowed_targets names 'json', which is a module, not a class"):
        check_train_config(compose_train("optimizer._target_=json.loads", *drop, "allowed_targets=[json]"))
    cfg = compose_train("optimizer._target_=json.loads", *drop, "allowed_targets=[json.loads]")
    with pytest.raises(UserError, match=r"^optimizer.s is required by json.loads"):
        check_train_config(cfg)


def test_warmup_shorter_than_the_run_passes():
    scheduler = OmegaConf.create({"_target_": "seo_cli.schedulers.warmup_cosine", "warmup_steps": 20})
    check_run_length(scheduler, total_steps=21)


@pytest.mark.parametrize("total_steps", [20, 5])
def test_warmup_as_long_as_the_run_or_longer_is_refused(total_steps):
    scheduler = OmegaConf.create({"_target_": "seo_cli.schedulers.warmup_cosine", "warmup_steps": 20})
    with pytest.raises(
        UserError,
        match=rf"^scheduler.warmup_steps=20 is not shorter than the run \({total_steps} optimizer steps\); "
        rf"lower warmup_steps below {total_steps} or raise epochs.$",
    ):
        check_run_length(scheduler, total_steps=total_steps)


@pytest.mark.parametrize(
    "scheduler", [None, {}, {"_target_": "seo_cli.schedulers.cosine", "min_lr_ratio": 0.0}]
)
def test_schedulers_without_warmup_have_no_length_rule(scheduler):
    check_run_length(OmegaConf.create(scheduler) if scheduler is not None else None, total_steps=1)


def test_plateau_direction_must_match_its_monitor_and_targets_are_listed_once(compose_train):
    cfg = compose_train("scheduler=plateau", "scheduler.monitor=val/intent/accuracy")
    with pytest.raises(
        UserError, match="scheduler.monitor=val/intent/accuracy grows.*set scheduler.mode=max"
    ):
        check_train_config(cfg)
    cfg = compose_train("data.targets=[{name:ctr,type:regression},{name:ctr,type:regression}]")
    with pytest.raises(UserError, match="data.targets lists 'ctr' twice"):
        check_train_config(cfg)


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("trainer.mode=sideways", "min, max"),
        ("trainer.early_stopping.mode=up", "min, max"),
        ("trainer.progress=loud", "auto, rich, plain"),
        ("trainer.gradient_clip_algorithm=foo", "norm, value"),
        ("data.placement=cloud", "auto, device, stream"),
        ("data.missing=maybe", "error, impute"),
        ("data.numeric_scaling=log", "standard, power"),
        ("device.type=tpu", "auto, cpu, cuda, mps"),
        ("device.fallback=ignore", "error, warn"),
        ("device.strategy=fsdp", "single, ddp"),
        ("data.targets=[{name:intent,type:ordinal}]", "classification, regression, multilabel, rate, ranking"),
    ],
)
def test_choice_knobs_are_refused_while_composing_with_their_choices_listed(compose_train, override, choices):
    from hydra.errors import ConfigCompositionException

    value = override.split("=", 1)[1].split("type:")[-1].rstrip("}]")
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(override)
    assert f"Invalid value '{value}', expected one of [{choices}]" in str(err.value.__cause__ or err.value)


def test_value_ranges_are_the_constructors_own_and_checked_before_data_loads(compose_train, monkeypatch):
    from seo_cli.data import pipeline
    from seo_cli.data.spec import InputSpec
    from seo_cli.models.mlp import MLP

    with pytest.raises(UserError, match=r"^model.dropout=1.5 must be at least 0 and below 1, e.g. 0.1.$"):
        MLP(InputSpec(num_numeric=2), {"y": 1}, dropout=1.5)  # the Python API gets the same sentence
    monkeypatch.setattr(pipeline, "prepare_data", lambda *a: pytest.fail("data loaded before the check"))
    with pytest.raises(UserError, match=r"^model.dropout=1.5 must be at least 0 and below 1, e.g. 0.1.$"):
        check_train_config(compose_train("model=mlp", "model.dropout=1.5"))
    with pytest.raises(UserError, match=r"^optimizer.momentum=-1.0 is refused by torch.optim.SGD \(Invalid momentum"):
        check_train_config(compose_train("optimizer=sgd", "optimizer.momentum=-1.0"))


def test_pad_to_multiple_of_below_1_is_refused_and_the_default_follows_compile(compose_train):
    with pytest.raises(UserError, match=r"^data.pad_to_multiple_of=0 must be at least 1\.$"):
        check_train_config(compose_train("data.pad_to_multiple_of=0"))
    from seo_cli.data.batches import pad_multiple

    assert pad_multiple(compose_train().data) == 1  # eager: each batch exactly its longest row
    assert pad_multiple(compose_train().data, compiled=True) == 32  # compiled: few shapes
    assert pad_multiple(compose_train("data.pad_to_multiple_of=8").data, compiled=True) == 8
    assert pad_multiple(compose_train("data.padding=max_length").data) is None

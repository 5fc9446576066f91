"""4a. Fuzzed configs: wrong types, out-of-range values, unknown keys and contradictory combinations either
train or stop with one sentence per problem and exit code 1, never a traceback and never a hang.

In this process: ``compose`` then ``train`` (what seo-train's main runs), and for overrides Hydra refuses
to compose, seo-train's own ``main`` with those arguments (Hydra reports them before the task runs).
A few cases go through the real command line too. Hypothesis draws 1 to 3 overrides at a time from
values chosen to sit on and past each knob's edges; the draws are derandomized, so CI sees the same
cases every run.
"""

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import seo_cli.cli
from seo_cli.errors import UserError
from seo_cli.train import train

from .support import (
    Hang,
    assert_clean_error,
    cli_env,
    command,
    compose_train,
    count,
    time_limit,
    tiny_overrides,
    write_tiny_table,
)

pytestmark = pytest.mark.reliability

EXAMPLES = 40  # about 0.45 s each: the suite's time budget (5 minutes on 2 cores)
CASE_SECONDS = 60  # a tiny run takes well under a second; a minute means it hangs

# Values on and past the edges of each knob, with a valid one or two so that combinations also train.
KNOBS: dict[str, list] = {
    "learning_rate": [-1, 0, "1e-400", "abc", "nan", "inf", "1e30", "3e-3"],
    "batch_size": [0, -1, 1, "x", 1000000, 16],
    "epochs": [0, -3, 1, 2, "ten", "1.5"],
    "weight_decay": [-1, 0, 0.5, "w"],
    "seed": [-1, 0, 4294967296, 7],
    "eval_batch_size": [0, 1, 7],
    "trainer.accumulate_grad_batches": [0, -2, 1, 3, 1000],
    "trainer.gradient_clip_val": [0, -1, "1e-12", 1.0, "null", "x"],
    "trainer.gradient_clip_algorithm": ["norm", "value", "bogus"],
    "trainer.log_every_n_steps": [0, 1, 1000000],
    "trainer.monitor": ["val/loss", "val/label/accuracy", "val/nope", "train/loss", "test/loss"],
    "trainer.mode": ["min", "max", "sideways"],
    "trainer.checkpoint.save_top_k": [-2, -1, 0, 2],
    "trainer.checkpoint.max_checkpoints": [0, 1, "null"],
    "trainer.checkpoint.every_n_steps": [0, 1, "null"],
    "trainer.checkpoint.every_n_epochs": [0, 1, 2],
    "trainer.checkpoint.save_best_only": ["true", "false", "maybe"],
    "trainer.early_stopping.patience": [0, 1, "null"],
    "trainer.early_stopping.monitor": ["val/nope", "val/y/r2", "null"],
    "trainer.early_stopping.mode": ["min", "max", "up"],
    "trainer.early_stopping.min_delta": [-1, 0, "1e9"],
    "device.precision": ["32", "bf16", "fp16", "fp8", "16"],
    "data.val_fraction": [0, 0.5, 1, 0.9, -0.1],
    "data.test_fraction": [0, 0.5, 0.2],
    "data.missing": ["error", "impute", "maybe"],
    "data.numeric_scaling": ["standard", "power", "log"],
    "data.placement": ["auto", "device", "stream", "cloud"],
    "data.num_workers": [-1, 0],
    "data.max_length": [0, 1, 4],
    "data.vocab_size": [3, 8, 50],
    "model.hidden_sizes": ["[]", "[0]", "[-3]", "[4,4]"],
    "model.dropout": [-0.5, 0, 0.99, 1, 1.5, "high"],
    "model.activation": ["relu", "gelu", "swish"],
    "model.categorical_embedding_dim": [0, -1, 4],
    "+model.bogus": [3],
    "model.nonexistent": [1],
    "foo": [1],
    "+foo": [1],
    "optimizer": ["sgd", "adam", "rmsprop", "adamw", "lion"],
    "scheduler": ["none", "cosine", "step", "plateau", "warmup_cosine"],
    "loss": ["auto", "cross_entropy", "focal", "mse", "l1", "huber", "multitask"],
    "objective": ["val/loss", "val/nope", "test/label/accuracy"],
    "resume": ["nope.pt"],
    "deterministic": ["true", "maybe"],
}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_tiny_table(tmp_path_factory.mktemp("table") / "pages.csv")


def seo_train_main(*argv: str) -> tuple[int, str]:
    """The seo-train console script (``seo_cli.cli.train``) in this process: its exit code and output."""
    out = io.StringIO()
    saved = sys.argv
    sys.argv = ["seo-train", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            seo_cli.cli.train()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved
    return code, out.getvalue()


def outcome(overrides: list[str], base: list[str], run_dir: Path) -> str:
    """Run one case; returns how it ended, or fails the test where it ended badly."""
    try:
        cfg = compose_train(*base, *overrides)
    except Exception:  # noqa: BLE001 - Hydra refused to compose: check what the user sees instead
        code, output = seo_train_main(*base, *overrides, f"hydra.run.dir={run_dir}")
        assert code == 1, f"{overrides}: Hydra refused them, yet seo-train exited {code}:\n{output[-2000:]}"
        assert "Traceback" not in output, output[-3000:]
        keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
        assert any(key in output for key in keys), f"the message names none of {keys}:\n{output}"
        return "composition error"
    try:
        with time_limit(CASE_SECONDS):
            summary = train(cfg, run_dir)
    except UserError as err:
        assert_clean_error(str(err), lines=None)  # several problems: one sentence each, all at once
        return "clean error"
    except Hang:
        pytest.fail(f"{overrides} ran for more than {CASE_SECONDS} s")
    assert summary["status"] == "ok"
    assert (run_dir / "checkpoints" / "last.pt").is_file() or cfg.trainer.checkpoint.save_best_only
    return "trained"


@st.composite
def override_sets(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(KNOBS)), min_size=1, max_size=3, unique=True))
    return [f"{key}={draw(st.sampled_from(KNOBS[key]))}" for key in keys]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: each case is a training run, and the drawn case is small already.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides=override_sets())
def test_fuzzed_overrides_train_or_fail_with_one_sentence(overrides, table, tmp_path_factory, cases_tried):
    base = [*tiny_overrides(table), "data.text_columns=[t]", "epochs=2"]
    run_dir = tmp_path_factory.mktemp("config_case") / "run"
    result = outcome(overrides, base, run_dir)
    count(cases_tried, "fuzzed config overrides (hypothesis)", result)


# Cases picked by hand, each its own test so that every bug shows at once. (overrides, what must
# happen: "trains", or a text the one-sentence error must contain, which names the key.)
CASES = [
    (["learning_rate=nan"], "learning_rate"),
    (["learning_rate=inf"], "learning_rate"),
    (["weight_decay=-1"], "weight_decay"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum"),
    (["optimizer=adam", "optimizer.betas=[2.0,0.999]"], "optimizer.betas"),
    (["model.dropout=1.5"], "model.dropout"),
    (["model.dropout=-0.5"], "model.dropout"),
    (["model.hidden_sizes=[-3]"], "model.hidden_sizes"),
    (["model.hidden_sizes=[0]"], "model.hidden_sizes"),
    (["model.categorical_embedding_dim=0"], "model.categorical_embedding_dim"),
    (["model=textcnn", "model.kernel_sizes=[0]"], "model.kernel_sizes"),
    (["model=textcnn", "model.kernel_sizes=[]"], "model.kernel_sizes"),
    (["model=textcnn", "model.embedding_dim=0"], "model.embedding_dim"),
    (["model=transformer", "model.d_model=10", "model.num_heads=3"], "model.num_heads"),
    (["loss=cross_entropy", "loss.label_smoothing=2"], "loss.label_smoothing"),
    (["loss=cross_entropy", "loss.class_weights={label:[1.0]}"], "loss.class_weights"),
    (["loss=focal", "loss.focal_gamma=-1"], "loss.focal_gamma"),
    (["loss=huber", "loss.huber_delta=0"], "loss.huber_delta"),
    (["scheduler=step", "scheduler.step_epochs=0"], "scheduler.step_epochs"),
    (["scheduler=step", "scheduler.gamma=-1"], "scheduler.gamma"),
    (["scheduler=plateau", "scheduler.factor=2"], "scheduler.factor"),
    (["scheduler=cosine", "scheduler.min_lr_ratio=-1"], "scheduler.min_lr_ratio"),
    (["scheduler=warmup_cosine", "scheduler.warmup_steps=-5"], "scheduler.warmup_steps"),
    (["seed=4294967296"], "seed"),
    (["data.format=xml"], "data.format"),
    (["data.numeric_columns=[a,a]"], "data.numeric_columns"),
    (["trainer.checkpoint.save_top_k=-1", "trainer.checkpoint.max_checkpoints=0"], "max_checkpoints"),
    (
        ["trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/nope"],
        "early_stopping.monitor",
    ),
    (["trainer.monitor=val/label/accuracy", "trainer.mode=min"], "trainer.mode=max"),
    (["trainer.checkpoint.save_best_only=true", "trainer.checkpoint.every_n_steps=2"], "save_best_only"),
    (["data.val_fraction=0.9", "data.test_fraction=0.2"], "data.val_fraction + data.test_fraction"),
    (["+foo=1"], "trains"),
    (["batch_size=1"], "trains"),
    (["batch_size=1000000"], "trains"),
    (["trainer.accumulate_grad_batches=1000"], "trains"),
    (["loss=cross_entropy", "loss.class_weights=balanced"], "trains"),
]


@pytest.mark.parametrize("overrides, expected", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_a_bad_value_is_one_sentence_naming_its_key(overrides, expected, table, tmp_path, cases_tried):
    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "mlp")
    base = [*tiny_overrides(table, model), "epochs=2"]
    try:
        cfg = compose_train(*base, *[o for o in overrides if not o.startswith("model=")])
        with time_limit(CASE_SECONDS):
            summary = train(cfg, tmp_path / "run")
    except UserError as err:
        count(cases_tried, "hand-picked config cases", "clean error")
        assert_clean_error(str(err))
        assert expected in str(err), str(err)
        return
    count(cases_tried, "hand-picked config cases", "trained")
    assert expected == "trains", f"{overrides} trained; expected an error naming {expected!r}"
    assert summary["status"] == "ok"


# The real command line, both cases at once: each process spends ~4 s importing torch, pandas and
# scikit-learn, so they overlap on the cores. (Composition errors took the same path above, through
# seo-train's main.) A UserError is logged as one "[ERROR] - " line; Hydra reports an exception the
# entrypoint let through as "Error executing job" and a multi-line repr.
CLI_CASES = [
    (["weight_decay=-1"], "weight_decay", None),
    (
        [
            "trainer.checkpoint.save_top_k=-1",
            "trainer.checkpoint.max_checkpoints=0",
            "trainer.early_stopping.patience=2",
            "trainer.early_stopping.monitor=val/nope",
        ],
        "trainer.checkpoint.max_checkpoints=0 must be at least 1, or null.",
        "trainer.early_stopping.monitor='val/nope' is not a metric this run logs",
    ),
]


@pytest.mark.slow  # the real command line: ~5 s of imports
def test_the_cli_exits_1_without_a_traceback_on_bad_configs(table, tmp_path):
    processes = []
    for i, (overrides, _, _) in enumerate(CLI_CASES):
        argv = [*tiny_overrides(table), *overrides, f"hydra.run.dir={tmp_path / str(i)}"]
        processes.append(
            subprocess.Popen(
                command("train", *argv),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=cli_env(),
            )
        )
    failures = []
    for (overrides, logged, printed), process in zip(CLI_CASES, processes, strict=True):
        output, _ = process.communicate(timeout=240)
        errors = [line.split("[ERROR] - ", 1)[1] for line in output.splitlines() if "[ERROR] - " in line]
        problems = []
        if process.returncode != 1:
            problems.append(f"exit {process.returncode}")
        if "Traceback" in output or "Error executing job" in output:
            problems.append("an exception reached Hydra")
        if logged is not None and not any(logged in line and line.endswith(".") for line in errors):
            problems.append(f"no [ERROR] sentence with {logged!r}")
        if printed is not None and printed not in output:
            problems.append(f"no {printed!r}")
        if problems:
            failures.append(f"{' '.join(overrides)}: {'; '.join(problems)}\n{output[-1500:]}")
    assert not failures, "\n\n".join(failures)


COMPOSITION_ERRORS = [
    (["batch_size=x"], "batch_size"),
    (["model=nope"], "model/nope"),
    (["loss=focal", "loss.gamma=-1"], "loss.gamma"),
]


@pytest.mark.parametrize(
    "overrides, key", COMPOSITION_ERRORS, ids=[" ".join(o) for o, _ in COMPOSITION_ERRORS]
)
def test_a_composition_error_names_the_override_without_a_traceback(overrides, key, tmp_path):
    """Hydra reports these before main runs, in its own few lines (the value, the full key, the hint):
    no traceback, exit 1, the key named. seo-cli keeps Hydra's wording here."""
    code, output = seo_train_main(*overrides, f"hydra.run.dir={tmp_path}")
    assert code == 1 and "Traceback" not in output
    assert key in output

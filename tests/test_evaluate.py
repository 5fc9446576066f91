"""seo-eval in-process: checkpoints rebuilt alone reproduce training's numbers; intervals, reports, new
files, comparisons on the same rows with paired differences, sweep directories, and the user's mistakes."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, smoke_checkpoint
from helpers.commands import run_command
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seo_cli.bootstrap import Resamples, interval, metric_samples
from seo_cli.config import register_configs
from seo_cli.data import seo_pages
from seo_cli.data.batches import make_batches
from seo_cli.data.pipeline import tensorize
from seo_cli.errors import UserError
from seo_cli.evaluate import checkpoint_paths, evaluation_rows, run_eval
from seo_cli.evaluation import Scorer
from seo_cli.loading import load_trained

CLASSIFICATION_TARGETS = ("intent", "quality")
REGRESSION_TARGETS = ("ctr", "position")
TARGETS = CLASSIFICATION_TARGETS + REGRESSION_TARGETS
TOP_KEYS = {"checkpoint", "epoch", "split", "rows", "metrics", "intervals", "bootstrap", "targets"}
CPU = torch.device("cpu")


def headline_keys(split: str) -> set[str]:
    return {
        f"{split}/{t}/{m}" for t in CLASSIFICATION_TARGETS for m in ("accuracy", "f1_macro", "roc_auc")
    } | {f"{split}/{t}/{m}" for t in REGRESSION_TARGETS for m in ("r2", "mae", "rmse")}


def compose_eval(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("eval", overrides=["device=cpu", *overrides])


def quoted(path: Path) -> str:
    return f"'{path}'"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """best.pt of two smoke runs on the same data and seed: the default model (2 epochs) and the MLP."""
    return {
        "multitask": smoke_checkpoint(tmp_path_factory, "multitask", "epochs=2"),
        "mlp": smoke_checkpoint(tmp_path_factory, "mlp", "model=mlp"),
    }


@pytest.fixture(scope="module")
def new_file(tmp_path_factory) -> Path:
    """200 labelled rows the checkpoints never saw, as a CSV."""
    path = tmp_path_factory.mktemp("data") / "new_pages.csv"
    seo_pages.generate_seo_pages(200, seed=9).to_csv(path, index=False)
    return path


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_val_split_reproduces_the_metrics_training_logged(runs, tmp_path):
    best = runs["multitask"]
    state = torch.load(best, weights_only=True)
    best_epoch = state["best"]["epoch"]
    [logged] = [row for row in state["history"] if row["epoch"] == best_epoch]
    logged_val = {k: v for k, v in logged.items() if k.startswith("val/")}

    result = run_eval(
        compose_eval(f"checkpoint={quoted(best)}", "split=val", "bootstrap=0", "report=false"), tmp_path
    )

    assert result["epoch"] == best_epoch
    assert result["split"] == "val" and result["rows"] == 90
    assert set(result["metrics"]) == set(logged_val)
    for key, value in logged_val.items():
        assert same(result["metrics"][key], value), (key, result["metrics"][key], value)


@pytest.fixture(scope="module")
def scored_test_split(runs, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval_test")
    cfg = compose_eval(f"checkpoint={quoted(runs['multitask'])}", "bootstrap=200", "seed=3", "report=false")
    return run_eval(cfg, out), out


def test_metrics_json_keys_and_intervals(runs, scored_test_split):
    result, out = scored_test_split
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) == TOP_KEYS
    assert written == json.loads(json.dumps(result))
    assert written["checkpoint"] == str(runs["multitask"])
    assert written["split"] == "test" and written["rows"] == 90
    assert written["bootstrap"] == {"resamples": 200, "confidence": 0.95, "seed": 3}
    assert set(written["targets"]) == set(TARGETS)
    assert set(written["intervals"]) == headline_keys("test")
    for key, (low, high) in written["intervals"].items():
        assert low <= written["metrics"][key] <= high, (key, low, written["metrics"][key], high)
        assert low < high, key
    # The test metrics training logged for the best checkpoint.
    summary = json.loads((runs["multitask"].parents[1] / "summary.json").read_text())
    for key, value in summary["metrics"].items():
        if key.startswith("test/"):
            assert written["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_average_precision_and_spearman_are_reported(scored_test_split):
    result, _ = scored_test_split
    for t in CLASSIFICATION_TARGETS:
        value = result["metrics"][f"test/{t}/average_precision"]
        assert 0 < value <= 1 and result["targets"][t]["average_precision"] == value
    for t in REGRESSION_TARGETS:
        value = result["metrics"][f"test/{t}/spearman"]
        assert -1 <= value <= 1 and result["targets"][t]["spearman"] == value


def test_bootstrap_zero_gives_no_intervals(runs, tmp_path):
    cfg = compose_eval(f"checkpoint={quoted(runs['mlp'])}", "bootstrap=0", "report=false")
    result = run_eval(cfg, tmp_path)
    assert result["intervals"] == {}
    assert result["bootstrap"]["resamples"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["intervals"] == {}
    assert not (tmp_path / "report.md").exists()


def test_report_writes_markdown_and_plots(runs, tmp_path):
    cfg = compose_eval(f"checkpoint={quoted(runs['multitask'])}", "bootstrap=100", "report=true")
    run_eval(cfg, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Evaluation: best.pt\n")
    assert "95% bootstrap intervals from 100 resamples (seed 0)" in md
    expected = {f"{t}_{kind}.png" for t in CLASSIFICATION_TARGETS for kind in ("confusion", "roc", "pr", "reliability")}
    expected |= {f"{t}_{kind}.png" for t in REGRESSION_TARGETS for kind in ("scatter", "residuals")}
    expected |= {"learning_curves.png"}
    plots = tmp_path / "plots"
    assert {p.name for p in plots.iterdir()} == expected
    for name in expected:
        assert (plots / name).read_bytes().startswith(b"\x89PNG"), name
        assert f"(plots/{name})" in md, name


def test_new_labelled_file_is_scored_row_by_row(runs, new_file, tmp_path):
    cfg = compose_eval(
        f"checkpoint={quoted(runs['multitask'])}",
        f"data.path={quoted(new_file)}",
        "bootstrap=100",
        "report=false",
    )
    result = run_eval(cfg, tmp_path)
    assert result["rows"] == 200
    assert result["split"] == f"file:{new_file}"
    assert result["metrics"] and all(key.startswith("eval/") for key in result["metrics"])
    assert {"eval/loss", "eval/intent/accuracy", "eval/ctr/r2"} <= set(result["metrics"])
    assert set(result["intervals"]) == headline_keys("eval")
    assert np.sum(result["targets"]["intent"]["confusion_matrix"]) == 200
    assert np.sum(result["targets"]["quality"]["confusion_matrix"]) == 200


def test_new_file_with_an_empty_target_names_the_row(runs, tmp_path):
    frame = seo_pages.generate_seo_pages(30, seed=9)
    frame.loc[4, "intent"] = None  # data row 5, line 6 after the header
    path = tmp_path / "unlabelled.csv"
    frame.to_csv(path, index=False)
    cfg = compose_eval(f"checkpoint={quoted(runs['multitask'])}", f"data.path={quoted(path)}", "bootstrap=0")
    with pytest.raises(UserError, match=re.escape(f"target 'intent' of {path} is empty at row 5 (line 6)")):
        run_eval(cfg, tmp_path / "out")


@pytest.fixture(scope="module")
def compared(runs, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("compare")
    pair = f"checkpoint=[{quoted(runs['multitask'])},{quoted(runs['mlp'])}]"
    return run_eval(compose_eval(pair, "bootstrap=100", "report=false"), out), out


def test_comparison_writes_one_folder_per_checkpoint_and_the_comparison(runs, compared):
    result, out = compared
    first, second = (json.loads((out / d / "metrics.json").read_text()) for d in ("00_multitask", "01_mlp"))
    assert first["checkpoint"] == str(runs["multitask"]) and second["checkpoint"] == str(runs["mlp"])
    assert first["rows"] == second["rows"] == 90
    assert not (out / "metrics.json").exists()
    assert [r["checkpoint"] for r in result["checkpoints"]] == [str(runs["multitask"]), str(runs["mlp"])]
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison == json.loads(json.dumps(result["comparison"]))
    assert comparison["reference"] == "multitask/best.pt"
    assert [row["label"] for row in comparison["checkpoints"]] == ["multitask/best.pt", "mlp/best.pt"]
    md = (out / "comparison.md").read_text()
    assert md.startswith("# Checkpoint comparison\n")
    assert "| metric | multitask/best.pt | mlp/best.pt |" in md
    for key in headline_keys("test"):
        assert f"| {key} | " in md, key
    assert md.count("Δ") == len(headline_keys("test")) + 1  # one per metric row, one in the legend


def test_comparison_differences_are_exact_and_paired(compared, runs):
    result, _ = compared
    reference, other = result["comparison"]["checkpoints"]
    assert set(reference["metrics"]) == set(other["metrics"]) == headline_keys("test")
    for key, entry in reference["metrics"].items():
        assert "difference" not in entry and "difference_interval" not in entry, key
        assert entry["value"] == result["checkpoints"][0]["metrics"][key]
        assert entry["interval"] == result["checkpoints"][0]["intervals"][key]
    for key, entry in other["metrics"].items():
        assert entry["value"] == result["checkpoints"][1]["metrics"][key]
        assert entry["difference"] == entry["value"] - reference["metrics"][key]["value"], key

    # The paired interval, recomputed: both models scored on the same seeded resamples of the same rows.
    cfg = compose_eval("checkpoint=x", "bootstrap=100")
    models = [load_trained(runs[name], CPU, []) for name in ("multitask", "mlp")]
    frame, split = evaluation_rows(models[0], cfg)
    samples = []
    for trained in models:
        pre = trained.preprocessor
        tensors = tensorize(pre, frame, split)
        batches = make_batches(
            tensors.inputs, tensors.targets, batch_size=1024, device=CPU, placement="device"
        )
        scored = Scorer(trained.targets, pre.target_scale).evaluate(
            trained.model, batches, split, trained.loss_fn
        )
        per_target = {}
        for t in trained.targets:
            y, pred = scored.labels[t.name], scored.predictions[t.name]
            if t.type != "classification":
                mean, std = pre.target_scale[t.name]
                y, pred = y * std + mean, pred * std + mean
            per_target[t.name] = (t.type, y, pred)
        # Each model on its own: the same seed draws the same resamples.
        values = metric_samples(per_target, Resamples(len(frame), 100, seed=0).counts())
        samples.append({f"test/{name}/{m}": v for name, ms in values.items() for m, v in ms.items()})
    for key, entry in other["metrics"].items():
        paired = interval(samples[1][key] - samples[0][key], 0.95)
        assert entry["difference_interval"] == pytest.approx(list(paired), rel=1e-6, abs=1e-9), key
        assert entry["interval"] == pytest.approx(list(interval(samples[1][key])), rel=1e-6, abs=1e-9), key


def test_a_checkpoint_compared_with_itself_differs_by_exactly_zero(runs, tmp_path):
    best = quoted(runs["mlp"])
    result = run_eval(compose_eval(f"checkpoint=[{best},{best}]", "bootstrap=100", "report=false"), tmp_path)
    assert (tmp_path / "00_mlp" / "metrics.json").is_file() and (
        tmp_path / "01_mlp" / "metrics.json"
    ).is_file()
    _, again = result["comparison"]["checkpoints"]
    assert set(again["metrics"]) == headline_keys("test")
    for key, entry in again["metrics"].items():
        assert entry["difference"] == 0.0, key
        assert entry["difference_interval"] == [0.0, 0.0], key


def test_sweep_directory_is_evaluated_in_job_order(runs, tmp_path):
    sweep = tmp_path / "sweep"
    for job, name in (("0", "multitask"), ("1", "mlp")):
        (sweep / job / "checkpoints").mkdir(parents=True)
        shutil.copy(runs[name], sweep / job / "checkpoints" / "best.pt")
    (sweep / "multirun.yaml").write_text("{}\n")
    out = tmp_path / "out"
    result = run_eval(compose_eval(f"checkpoint={quoted(sweep)}", "bootstrap=0", "report=false"), out)
    expected = [str(sweep / job / "checkpoints" / "best.pt") for job in ("0", "1")]
    assert [r["checkpoint"] for r in result["checkpoints"]] == expected
    assert [row["label"] for row in result["comparison"]["checkpoints"]] == ["0/best.pt", "1/best.pt"]
    assert (out / "00_0" / "metrics.json").is_file() and (out / "01_1" / "metrics.json").is_file()
    assert (out / "comparison.md").is_file()


def test_checkpoint_paths_orders_jobs_by_number_and_takes_run_directories(tmp_path):
    for job in ("2", "10", "1"):
        (tmp_path / "sweep" / job / "checkpoints").mkdir(parents=True)
        (tmp_path / "sweep" / job / "checkpoints" / "best.pt").touch()
    (tmp_path / "sweep" / "1" / "checkpoints" / "last.pt").touch()
    assert checkpoint_paths(str(tmp_path / "sweep")) == [
        tmp_path / "sweep" / job / "checkpoints" / "best.pt" for job in ("1", "2", "10")
    ]
    run = tmp_path / "sweep" / "2"
    assert checkpoint_paths(str(run)) == [run / "checkpoints" / "best.pt"]
    assert checkpoint_paths(["a.pt", str(run)]) == [Path("a.pt"), run / "checkpoints" / "best.pt"]


def test_directory_without_best_pt_is_a_user_error(tmp_path):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "checkpoints" / "last.pt").touch()
    with pytest.raises(UserError, match="is a directory without checkpoints/best.pt"):
        checkpoint_paths(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="is a directory without checkpoints/best.pt"):
        run_eval(compose_eval(f"checkpoint={quoted(tmp_path / 'empty')}", "bootstrap=0"), tmp_path / "out")


def test_unknown_split_is_refused_while_composing_with_the_splits_listed():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_eval("checkpoint=x.pt", "split=bogus")
    assert "Invalid value 'bogus', expected one of [train, val, test]" in str(
        err.value.__cause__ or err.value
    )


@pytest.mark.slow
def test_cli_missing_checkpoint_is_one_line_and_exit_code_1(tmp_path):
    done = run_command(
        "evaluate", f"checkpoint={tmp_path / 'missing.pt'}", f"hydra.run.dir={tmp_path / 'out'}"
    )
    assert done.code == 1, done.output
    assert "Traceback" not in done.output
    [line] = done.output.strip().splitlines()
    assert "missing.pt" in line and "does not exist" in line


def test_the_shape_only_build_fills_no_meta_tensor_and_every_real_one():
    """load_trained builds the model on the meta device first (to refuse oversized configs); there its
    initialisers are skipped: torch sends normal_ on a meta tensor through a 1.4 s import of torch._dynamo."""
    from seo_cli.loading import _NoFillOnMeta

    with torch.device("meta"), _NoFillOnMeta():
        embedding = torch.nn.Embedding(5, 3)
        linear = torch.nn.Linear(3, 2)
    assert embedding.weight.is_meta and linear.weight.shape == (2, 3)
    real = torch.zeros(4)
    with _NoFillOnMeta():
        torch.nn.init.normal_(real)
        torch.nn.init.uniform_(real[:2], 5.0, 6.0)
    assert (real != 0).all() and (real[:2] >= 5).all()

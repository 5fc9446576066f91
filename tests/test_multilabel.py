"""Multi-label targets: metrics against scikit-learn on fixed arrays, the label vocabulary and its checks,
binary cross entropy, and a small run that learns its labels, scored by seo-eval and seo-predict."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from sklearn import metrics as skm

from seo_cli.config import DataConfig, TargetConfig, register_configs
from seo_cli.data.pipeline import prepare_data
from seo_cli.data.preprocess import Preprocessor, split_labels
from seo_cli.data.spec import MULTILABEL, Target
from seo_cli.errors import UserError
from seo_cli.evaluate import run_eval
from seo_cli.loading import load_trained
from seo_cli.losses import MultiTargetLoss
from seo_cli.metrics import HIGHER_IS_BETTER, metric_names, multilabel_report
from seo_cli.predict import run_predict
from seo_cli.validation import check_train_config

CPU = torch.device("cpu")
RNG = np.random.default_rng(3)
Y = (RNG.uniform(size=(80, 4)) < [0.5, 0.3, 0.1, 0.0]).astype(int)  # the last label has no positive row
PROBA = np.clip(0.4 * Y + RNG.uniform(0.0, 0.65, size=Y.shape), 0, 1)  # wrong on both sides of 0.5


def test_metrics_equal_scikit_learns():
    report = multilabel_report(Y, PROBA, ["news", "local", "shop", "jobs"])
    pred = (PROBA >= 0.5).astype(int)
    assert report["f1_micro"] == pytest.approx(skm.f1_score(Y, pred, average="micro", zero_division=0))
    assert report["f1_macro"] == pytest.approx(skm.f1_score(Y, pred, average="macro", zero_division=0))
    assert report["precision_micro"] == pytest.approx(skm.precision_score(Y, pred, average="micro"))
    assert report["recall_micro"] == pytest.approx(skm.recall_score(Y, pred, average="micro"))
    assert report["subset_accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert report["hamming_loss"] == pytest.approx(skm.hamming_loss(Y, pred))
    # Mean average precision over the labels with a positive row: "jobs" has none.
    expected_map = np.mean([skm.average_precision_score(Y[:, k], PROBA[:, k]) for k in range(3)])
    assert report["mean_average_precision"] == pytest.approx(expected_map)
    p = np.clip(PROBA, 1e-7, 1 - 1e-7)
    assert report["log_loss"] == pytest.approx(-np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
    assert report["per_label"]["news"]["f1-score"] == pytest.approx(skm.f1_score(Y[:, 0], pred[:, 0]))
    assert report["per_label"]["jobs"]["support"] == 0.0
    assert 0 < report["f1_macro"] < report["f1_micro"] < 1


def test_metric_names_and_directions():
    names = metric_names([Target("topics", MULTILABEL)], "val")
    assert names[:3] == ["val/loss", "val/topics/loss", "val/topics/subset_accuracy"]
    assert "val/topics/mean_average_precision" in names and "val/topics/f1_micro" in names
    assert {"f1_micro", "mean_average_precision", "subset_accuracy"} <= HIGHER_IS_BETTER
    assert "hamming_loss" not in HIGHER_IS_BETTER


def fitted(values: list[str], separator: str = "|") -> Preprocessor:
    frame = pd.DataFrame({"x": np.arange(len(values), dtype=float), "topics": values})
    return Preprocessor.fit(
        frame, text_columns=[], numeric_columns=["x"], categorical_columns=[],
        targets=[Target("topics", MULTILABEL)], max_length=None, vocab_size=8, label_separator=separator,
    )


def test_the_labels_are_the_training_splits_and_encode_multi_hot():
    pre = fitted(["news| local", "shop", "local|", "news;x"])
    assert pre.label_names == {"topics": ["local", "news", "news;x", "shop"]}
    assert pre.heads == {"topics": 4} and pre.class_names == {}
    y = pre.transform_targets(pd.DataFrame({"topics": ["shop|local", "news"]}))["topics"]
    torch.testing.assert_close(y, torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]]))
    with pytest.raises(UserError, match="target topics has label 'jobs' in val \\(row 2 of it\\) but not in the training"):
        pre.transform_targets(pd.DataFrame({"topics": ["news", "jobs|news"]}), "val")
    assert fitted(["a;b", "c"], separator=";").label_names == {"topics": ["a", "b", "c"]}
    assert split_labels(pd.Series(["a |b", "", "b|b"]), "|") == [{"a", "b"}, set(), {"b"}]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"classes": ["news", "news"]}, "targets[0].classes must be a list of 1 to 10,000 distinct, non-empty labels"),
        ({"classes": ["news", ""]}, "distinct, non-empty labels without the separator '|'"),
        ({"classes": ["news|local"]}, "without the separator '|'"),
        ({"classes": [" news"]}, "non-empty labels"),
        ({"classes": "news"}, "targets[0].classes must be"),
        ({"separator": ""}, "targets[0].separator must be the text of 1 to 16 characters"),
        ({"separator": 7}, "targets[0].separator must be"),
        ({"type": "multi"}, "targets[0].type must be classification, regression, rate, multilabel or ranking"),
    ],
)
def test_hostile_label_lists_are_refused_in_one_sentence(change, says):
    state = fitted(["news|local", "shop"]).to_state()
    state["targets"] = [{**state["targets"][0], **change}]
    with pytest.raises(UserError) as err:
        Preprocessor.from_state(state, "checkpoint bad.pt")
    assert says in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("checkpoint bad.pt: preprocessing.targets[0].")


def test_a_classification_target_with_a_separator_is_refused():
    state = fitted(["news"]).to_state()
    state["targets"] = [{"name": "intent", "type": "classification", "classes": ["a", "b"], "separator": "|"}]
    with pytest.raises(UserError, match="targets\\[0\\].separator must be"):
        Preprocessor.from_state(state)


def test_auto_loss_is_binary_cross_entropy_per_label():
    loss_fn = MultiTargetLoss([Target("topics", MULTILABEL)], class_counts={})
    logits, y = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    expected = -(y * torch.log(torch.sigmoid(logits)) + (1 - y) * torch.log(1 - torch.sigmoid(logits))).mean()
    torch.testing.assert_close(loss_fn({"topics": logits}, {"topics": y}), expected)
    one = MultiTargetLoss([Target("t", MULTILABEL)], class_counts={})
    # A one-label head's output is [rows]: compared with its [rows, 1] labels.
    torch.testing.assert_close(one({"t": logits[:, 0]}, {"t": y[:, :1]}), F.binary_cross_entropy_with_logits(logits[:, :1], y[:, :1]))


LABELS = ("news", "local", "shop")


def topics_frame(rows: int, seed: int) -> pd.DataFrame:
    """Three numeric signals, each switching one label on; rows with none are "other"."""
    x = np.random.default_rng(seed).normal(size=(rows, 3))
    on = x > [0.0, 0.0, 0.5]
    topics = ["|".join(label for label, hit in zip(LABELS, row, strict=True) if hit) or "other" for row in on]
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "topics": topics})


def compose_command(name: str, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def data_overrides(path) -> list[str]:
    return [
        "data=csv", f"data.path='{path}'", "data.numeric_columns=[x1,x2,x3]",
        "data.targets=[{name:topics,type:multilabel}]",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An MLP trained 3 epochs on 400 rows of topics: (summary, best.pt, the data file)."""
    from seo_cli.train import train

    folder = tmp_path_factory.mktemp("multilabel")
    path = folder / "topics.csv"
    topics_frame(400, seed=0).to_csv(path, index=False)
    cfg = compose_command(
        "train", "debug=smoke", "logger=none", "trainer.progress=plain", "device=cpu", "model=mlp",
        *data_overrides(path), "epochs=3", "learning_rate=1e-2",
    )
    summary = train(cfg, folder / "run")
    return summary, folder / "run" / "checkpoints" / "best.pt", path


def test_a_small_run_learns_the_labels(run):
    summary, _, _ = run
    metrics = summary["metrics"]
    assert metrics["test/topics/f1_micro"] > 0.9
    assert metrics["test/topics/mean_average_precision"] > 0.95
    assert metrics["test/topics/subset_accuracy"] > 0.75
    assert metrics["test/topics/loss"] == pytest.approx(metrics["test/topics/log_loss"], rel=1e-5)


def test_seo_eval_reproduces_the_test_metrics(run, tmp_path):
    summary, best, _ = run
    result = run_eval(compose_command("eval", "device=cpu", f"checkpoint='{best}'", "bootstrap=20"), tmp_path)
    for key in ("f1_micro", "f1_macro", "mean_average_precision", "subset_accuracy", "hamming_loss"):
        assert result["metrics"][f"test/topics/{key}"] == pytest.approx(summary["metrics"][f"test/topics/{key}"], abs=1e-9)
    assert set(result["targets"]["topics"]["per_label"]) == {*LABELS, "other"}
    report = (tmp_path / "report.md").read_text()
    assert "Per label:" in report and "(plots/topics_pr.png)" in report


def test_seo_predict_writes_one_probability_per_label_and_the_label_set(run, tmp_path):
    _, best, _ = run
    frame = topics_frame(50, seed=7)
    frame.drop(columns="topics").to_csv(tmp_path / "new.csv", index=False)
    run_predict(compose_command("predict", "device=cpu", f"checkpoint='{best}'", f"input={tmp_path / 'new.csv'}", f"output={tmp_path / 'p.csv'}"))
    written = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    labels = ["local", "news", "other", "shop"]
    assert list(written.columns) == ["row", "topics", *(f"topics_{label}" for label in labels)]
    trained = load_trained(best, CPU, [])
    with torch.no_grad():
        logits = trained.model.eval()(trained.preprocessor.transform_inputs(frame))["topics"]
    proba = torch.sigmoid(logits).numpy()
    np.testing.assert_allclose(written[[f"topics_{label}" for label in labels]].to_numpy(), proba, atol=1e-6)
    expected = ["|".join(label for label, p in zip(labels, row, strict=True) if p >= 0.5) for row in proba]
    assert written["topics"].tolist() == expected
    right = np.mean([set(filter(None, a.split("|"))) == set(b.split("|")) for a, b in zip(expected, frame["topics"], strict=True)])
    assert right > 0.75


def test_a_label_seen_only_in_validation_names_the_row(tmp_path):
    frame = topics_frame(60, seed=1)
    frame["split"] = ["train"] * 40 + ["val"] * 10 + ["test"] * 10
    frame.loc[45, "topics"] = "news|jobs"
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = DataConfig(
        source="file", path=str(tmp_path / "t.csv"), numeric_columns=["x1", "x2", "x3"], split_column="split",
        targets=[TargetConfig("topics", "multilabel")],
    )
    with pytest.raises(UserError, match="label 'jobs' of multilabel target 'topics' is in the val split .*row 46 \\(line 47\\)"):
        prepare_data(data, seed=0)


def test_an_empty_label_separator_is_refused_before_data_loads(tmp_path):
    cfg = compose_command("train", *data_overrides(tmp_path / "absent.csv"), "data.label_separator=' '")
    with pytest.raises(UserError, match="data.label_separator=' ' must be 1 to 16 characters, not only spaces"):
        check_train_config(cfg)


def test_calibrate_refuses_a_checkpoint_without_classification_targets(run, tmp_path):
    _, best, _ = run
    cfg = compose_command("eval", "device=cpu", f"checkpoint='{best}'", "calibrate=true")
    with pytest.raises(UserError, match="calibrate=true fits a temperature per classification target, and checkpoint .* has none"):
        run_eval(cfg, tmp_path)


def test_a_multilabel_target_on_parquet_shards_is_refused_at_start_up(tmp_path):
    cfg = compose_command(
        "train", "data=parquet_dir", f"data.path='{tmp_path}'", "data.split_column=split", "data.numeric_columns=[x1]",
        "data.targets=[{name:topics,type:multilabel}]",
    )
    with pytest.raises(UserError, match="multilabel target 'topics' cannot be streamed from Parquet shards"):
        check_train_config(cfg)


def test_a_fold_ensemble_averages_the_label_probabilities(run):
    from omegaconf import OmegaConf

    from seo_cli.evaluate import Stopwatch, score_checkpoint, score_ensemble, split_rows

    _, best, _ = run
    models = [load_trained(best, CPU, []) for _ in range(2)]
    frame = split_rows(models[0], "test")
    cfg = OmegaConf.create({"eval_batch_size": 64})
    alone, _ = score_checkpoint(models[0], frame, "test", cfg, CPU, Stopwatch())
    both, _ = score_ensemble(models, frame, "test", cfg, CPU, Stopwatch())
    np.testing.assert_allclose(both.predictions["topics"], alone.predictions["topics"], atol=1e-5)
    assert both.metrics["test/topics/f1_micro"] == alone.metrics["test/topics/f1_micro"]

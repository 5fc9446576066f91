"""Row weights (data.weight_column), rate targets (type: rate with data.trials_column) and class-balanced
sampling (data.sampler=balanced): losses and metrics against hand and scikit-learn computations on the same
arrays, the sampler's class frequencies, seeding, resume and DDP shares, the mistakes as one sentence, and
one tiny seo-train / seo-eval / seo-predict run on a file with all three."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers.commands import run_command
from omegaconf import OmegaConf
from sklearn import metrics as skm
from torch import nn

from seo_cli.bootstrap import counts_of, metric_samples
from seo_cli.config import DataConfig, TrainerConfig
from seo_cli.data.batches import DeviceBatches, StreamedBatches
from seo_cli.data.pipeline import load_frame
from seo_cli.data.preprocess import check_state
from seo_cli.data.spec import RATE, TRIALS_KEY, WEIGHT_KEY, Target
from seo_cli.errors import UserError
from seo_cli.losses import MultiTargetLoss
from seo_cli.metrics import classification_report, rate_report, regression_report
from seo_cli.trainer import fit
from seo_cli.validation import _data_problems

RNG = np.random.default_rng(7)


def proba_for(y: np.ndarray, k: int) -> np.ndarray:
    logits = RNG.normal(size=(len(y), k)) + 1.5 * np.eye(k)[y]
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def weights_with_zeros(n: int) -> np.ndarray:
    w = RNG.uniform(0, 3, size=n)
    w[RNG.choice(n, n // 5, replace=False)] = 0.0
    return w


# --- metrics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
def test_weighted_classification_metrics_equal_sklearn_sample_weight(k):
    y = RNG.integers(0, k, size=300)
    proba, w = proba_for(y, k), weights_with_zeros(300)
    got = classification_report(y, proba, sample_weight=w)
    pred = proba.argmax(1)
    expected = {
        "accuracy": skm.accuracy_score(y, pred, sample_weight=w),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred, sample_weight=w),
        "f1_macro": skm.f1_score(y, pred, average="macro", sample_weight=w),
        "f1_weighted": skm.f1_score(y, pred, average="weighted", sample_weight=w),
        "precision_macro": skm.precision_score(y, pred, average="macro", sample_weight=w),
        "recall_weighted": skm.recall_score(y, pred, average="weighted", sample_weight=w),
        "roc_auc": skm.roc_auc_score(y, proba[:, 1], sample_weight=w)
        if k == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr", sample_weight=w),
        "log_loss": skm.log_loss(y, proba, sample_weight=w),
    }
    if k == 2:
        expected["average_precision"] = skm.average_precision_score(y, proba[:, 1], sample_weight=w)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    # The weights matter: the unweighted values differ.
    assert classification_report(y, proba)["accuracy"] != pytest.approx(got["accuracy"], rel=1e-6)
    np.testing.assert_allclose(
        got["confusion_matrix"], skm.confusion_matrix(y, pred, sample_weight=w), rtol=1e-12
    )


def test_weighted_regression_metrics_equal_sklearn_sample_weight():
    y = RNG.normal(size=200)
    pred, w = y + RNG.normal(size=200) * 0.5, weights_with_zeros(200)
    got = regression_report(y, pred, sample_weight=w)
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, pred, sample_weight=w), rel=1e-12)
    assert got["rmse"] == pytest.approx(
        math.sqrt(skm.mean_squared_error(y, pred, sample_weight=w)), rel=1e-12
    )
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred, sample_weight=w), rel=1e-12)
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred, sample_weight=w), rel=1e-12)
    assert got["mse"] != pytest.approx(skm.mean_squared_error(y, pred), rel=1e-6)


def test_rate_metrics_are_weighted_by_impressions_by_hand():
    trials = np.array([10.0, 1000.0, 0.0, 50.0])
    rate = np.array([0.2, 0.01, 0.0, 0.5])
    p = np.array([0.1, 0.02, 0.9, 0.5])
    got = rate_report(rate, p, trials)
    bce = -(rate * np.log(p) + (1 - rate) * np.log(1 - p))
    total = 10 + 1000 + 50
    assert got["log_loss"] == pytest.approx((10 * bce[0] + 1000 * bce[1] + 50 * bce[3]) / total, rel=1e-12)
    assert got["brier"] == pytest.approx((10 * 0.01 + 1000 * 0.0001 + 0) / total, rel=1e-12)
    assert got["mae"] == pytest.approx((10 * 0.1 + 1000 * 0.01 + 0) / total, rel=1e-12)


def test_bootstrap_with_weights_equals_sklearn_with_count_times_weight():
    n = 120
    y = RNG.integers(0, 3, size=n)
    proba, w = proba_for(y, 3), weights_with_zeros(n)
    value = RNG.normal(size=n)
    value_pred = value + 0.3 * RNG.normal(size=n)
    trials = RNG.integers(1, 100, size=n).astype(float)
    rate = RNG.binomial(trials.astype(int), 0.1) / trials
    rate_pred = np.clip(rate + 0.05 * RNG.normal(size=n), 0.01, 0.99)
    indices = RNG.integers(0, n, size=(5, n))
    samples = metric_samples(
        {
            "c": ("classification", y, proba, w),
            "r": ("regression", value, value_pred, w),
            "rate": (RATE, rate, rate_pred, w * trials),
        },
        [counts_of(indices, n)],
    )
    for i, row in enumerate(indices):
        sw = np.bincount(row, minlength=n) * w
        pred = proba.argmax(1)
        assert samples["c"]["accuracy"][i] == pytest.approx(
            skm.accuracy_score(y, pred, sample_weight=sw), rel=1e-9
        )
        assert samples["c"]["f1_macro"][i] == pytest.approx(
            skm.f1_score(y, pred, average="macro", sample_weight=sw), rel=1e-9
        )
        assert samples["c"]["roc_auc"][i] == pytest.approx(
            skm.roc_auc_score(y, proba, multi_class="ovr", sample_weight=sw), rel=1e-9
        )
        assert samples["r"]["r2"][i] == pytest.approx(
            skm.r2_score(value, value_pred, sample_weight=sw), rel=1e-9
        )
        assert samples["r"]["mae"][i] == pytest.approx(
            skm.mean_absolute_error(value, value_pred, sample_weight=sw), rel=1e-9
        )
        by_hand = rate_report(rate, rate_pred, sw * trials)
        for key in ("log_loss", "brier", "mae"):
            assert samples["rate"][key][i] == pytest.approx(by_hand[key], rel=1e-9)


# --- losses ----------------------------------------------------------------------------------------


def test_weighted_loss_equals_the_weighted_mean_by_hand():
    targets = [Target("c", "classification"), Target("v", "regression")]
    loss_fn = MultiTargetLoss(targets, {"c": [3, 1, 2]}, class_weights={"c": [1.0, 2.0, 0.5]})
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    v, v_true = torch.randn(6), torch.randn(6)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 3.0, 1.0])
    terms = loss_fn.terms({"c": logits, "v": v}, {"c": y, "v": v_true, WEIGHT_KEY: w})
    nll = -F.log_softmax(logits, 1)[torch.arange(6), y]
    cw = torch.tensor([1.0, 2.0, 0.5])[y]
    torch.testing.assert_close(terms["c"], (w * cw * nll).sum() / (w * cw).sum())
    torch.testing.assert_close(terms["v"], (w * (v - v_true) ** 2).sum() / w.sum())
    # Weights of 1 are the plain means.
    ones = loss_fn.terms({"c": logits, "v": v}, {"c": y, "v": v_true, WEIGHT_KEY: torch.ones(6)})
    plain = loss_fn.terms({"c": logits, "v": v}, {"c": y, "v": v_true})
    for name in plain:
        torch.testing.assert_close(ones[name], plain[name])


def test_focal_and_huber_terms_take_row_weights_too():
    targets = [Target("c", "classification"), Target("v", "regression")]
    loss_fn = MultiTargetLoss(
        targets, {"c": [1, 1]}, classification="focal", regression="huber", focal_gamma=2.0
    )
    logits, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    v, v_true = torch.randn(5) * 3, torch.randn(5)
    w = torch.tensor([0.5, 0.0, 2.0, 1.0, 3.0])
    terms = loss_fn.terms({"c": logits, "v": v}, {"c": y, "v": v_true, WEIGHT_KEY: w})
    p = F.softmax(logits, 1)[torch.arange(5), y]
    torch.testing.assert_close(terms["c"], (w * -((1 - p) ** 2) * p.log()).sum() / w.sum())
    error = (v - v_true).abs()
    huber = torch.where(error < 1, 0.5 * error**2, error - 0.5)
    torch.testing.assert_close(terms["v"], (w * huber).sum() / w.sum())


def test_a_batch_whose_rows_all_weigh_zero_has_loss_zero_and_finite_gradients():
    loss_fn = MultiTargetLoss([Target("v", "regression")], {})
    v = torch.randn(4, requires_grad=True)
    loss = loss_fn({"v": v}, {"v": torch.randn(4), WEIGHT_KEY: torch.zeros(4)})
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(v.grad, torch.zeros(4))


def test_rate_loss_is_the_binomial_nll_per_trial_by_hand():
    loss_fn = MultiTargetLoss([Target("clicks", RATE)], {})
    z = torch.tensor([-2.0, 0.5, -4.0, 1.0], dtype=torch.float64)
    clicks = torch.tensor([3.0, 40.0, 0.0, 7.0], dtype=torch.float64)
    trials = torch.tensor([20.0, 60.0, 500.0, 7.0], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    p = torch.sigmoid(z)
    nll = -(clicks * p.log() + (trials - clicks) * (1 - p).log())  # binomial NLL without log C(n, k)
    labels = {"clicks": clicks / trials, TRIALS_KEY: trials}
    torch.testing.assert_close(loss_fn({"clicks": z}, labels), nll.sum() / trials.sum())
    torch.testing.assert_close(
        loss_fn({"clicks": z}, labels | {WEIGHT_KEY: w}), (w * nll).sum() / (w * trials).sum()
    )


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
        self.c, self.v = nn.Linear(8, 2), nn.Linear(8, 1)

    def forward(self, batch):
        h = self.body(batch["numeric"])
        return {"c": self.c(h), "v": self.v(h).squeeze(-1)}


def train_two_heads(x, c, v, w) -> nn.Module:
    torch.manual_seed(0)
    model = TwoHeads()
    loss_fn = MultiTargetLoss([Target("c", "classification"), Target("v", "regression")], {"c": [1, 1]})
    batches = [({"numeric": x}, {"c": c, "v": v, WEIGHT_KEY: w})]
    fit(
        model,
        torch.optim.AdamW(model.parameters(), lr=0.05),
        loss_fn,
        batches,
        TrainerConfig(epochs=4, monitor="train/loss", progress="plain"),
    )
    return model


def test_training_with_a_row_at_weight_zero_equals_training_without_it():
    g = torch.Generator().manual_seed(3)
    x, c, v = (
        torch.randn(16, 3, generator=g),
        torch.randint(0, 2, (16,), generator=g),
        torch.randn(16, generator=g),
    )
    w = torch.rand(16, generator=g) + 0.5
    without = train_two_heads(x[1:], c[1:], v[1:], w[1:])
    x[0], v[0] = 50.0, 1e3  # an outlier: it would move the weights if it counted
    with_zero = train_two_heads(x, c, v, torch.cat([torch.zeros(1), w[1:]]))
    counted = train_two_heads(x, c, v, torch.cat([torch.ones(1), w[1:]]))
    for a, b in zip(without.state_dict().values(), with_zero.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    pairs = zip(without.state_dict().values(), counted.state_dict().values(), strict=True)
    assert not all(torch.allclose(a, d) for a, d in pairs)  # the outlier, counted, moves them


# --- balanced sampler ------------------------------------------------------------------------------


def balanced_batches(labels: torch.Tensor, seed: int = 0, shard=None, streamed: bool = False):
    inputs, targets = {"numeric": torch.arange(len(labels)).float().unsqueeze(1)}, {"c": labels}
    if streamed:
        return StreamedBatches(
            inputs,
            targets,
            batch_size=64,
            shuffle=True,
            seed=seed,
            num_workers=0,
            shard=shard,
            balance_labels=labels,
        )
    return DeviceBatches(
        inputs,
        targets,
        batch_size=64,
        device=torch.device("cpu"),
        shuffle=True,
        seed=seed,
        shard=shard,
        balance_labels=labels,
    )


def rows_of(batches, epoch: int, skip: int = 0) -> list[int]:
    batches.set_epoch(epoch)
    return [int(r) for inputs, _ in itertools.islice(batches, skip, None) for r in inputs["numeric"][:, 0]]


SKEWED = torch.tensor([0] * 1800 + [1] * 150 + [2] * 50)  # 90% / 7.5% / 2.5%


def test_balanced_epoch_draws_each_class_about_equally_often():
    rows = rows_of(balanced_batches(SKEWED), 0)
    assert len(rows) == len(SKEWED)  # an epoch is as long as the split
    shares = np.bincount(SKEWED[rows].numpy(), minlength=3) / len(rows)
    assert np.all(np.abs(shares - 1 / 3) < 0.04), shares  # 4 binomial standard deviations (0.0105 each)
    plain = DeviceBatches(
        {"numeric": torch.arange(2000.0).unsqueeze(1)},
        {"c": SKEWED},
        batch_size=64,
        device=torch.device("cpu"),
        shuffle=True,
    )
    assert np.bincount(SKEWED[rows_of(plain, 0)].numpy())[2] == 50  # random: the skew stays


def test_balanced_draws_are_seeded_and_a_resumed_epoch_continues_them():
    first = rows_of(balanced_batches(SKEWED, seed=5), 2)
    assert rows_of(balanced_batches(SKEWED, seed=5), 2) == first  # a fresh instance, as after a resume
    assert rows_of(balanced_batches(SKEWED, seed=5), 3) != first
    assert rows_of(balanced_batches(SKEWED, seed=6), 2) != first
    assert rows_of(balanced_batches(SKEWED, seed=5), 2, skip=10) == first[10 * 64 :]
    assert rows_of(balanced_batches(SKEWED, seed=5, streamed=True), 2) == first  # streamed: the same draws


def test_balanced_draws_under_ddp_are_the_single_draw_dealt_to_the_ranks():
    whole = rows_of(balanced_batches(SKEWED, seed=1), 0)
    ranks = [rows_of(balanced_batches(SKEWED, seed=1, shard=(r, 2)), 0) for r in range(2)]
    assert [row for pair in zip(*ranks, strict=True) for row in pair] == whole  # every other draw each
    # An odd split: the draws pad up to a multiple of the world size, so the ranks take the same steps.
    odd = [rows_of(balanced_batches(SKEWED[:1999], seed=1, shard=(r, 2)), 0) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 1000


# --- mistakes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "pages.csv"
    n = 240
    x = RNG.normal(size=n)
    impressions = RNG.integers(0, 300, size=n)
    clicks = RNG.binomial(impressions, 1 / (1 + np.exp(-(x - 2))))
    label = np.where(x + 0.3 * RNG.normal(size=n) > 1.0, "top", "rest")
    weight = RNG.uniform(0.2, 3, size=n)
    weight[:12] = 0.0
    pd.DataFrame(
        {
            "x": x,
            "z": RNG.normal(size=n),
            "impressions": impressions,
            "clicks": clicks,
            "label": label,
            "w": weight,
        }
    ).to_csv(path, index=False)
    return path


def data_config(path: Path, **overrides) -> DataConfig:
    fields = {
        "source": "file",
        "path": str(path),
        "numeric_columns": ["x", "z"],
        "targets": [{"name": "label", "type": "classification"}, {"name": "clicks", "type": "rate"}],
        "weight_column": "w",
        "trials_column": "impressions",
    } | overrides
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), fields))


@pytest.mark.parametrize(
    ("column", "row", "value", "message"),
    [
        (
            "w",
            4,
            "-1",
            "data.weight_column 'w' of {} holds '-1.0' at row 5 (line 6), but a row weight must be a finite number of 0 or more",
        ),
        (
            "w",
            2,
            "",
            "data.weight_column 'w' of {} holds an empty cell at row 3 (line 4), but a row weight must be a finite number of 0 or more",
        ),
        ("w", 7, "heavy", "data.weight_column 'w' of {} holds 'heavy' at row 8 (line 9)"),
        (
            "impressions",
            3,
            "-5",
            "data.trials_column 'impressions' of {} holds '-5' at row 4 (line 5), but a number of trials",
        ),
        ("clicks", 6, "1000000", "rate target 'clicks' of {} has 1e+06 successes out of"),
    ],
)
def test_bad_weights_trials_and_successes_are_one_sentence_naming_column_and_row(
    table, tmp_path, column, row, value, message
):
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(UserError) as err:
        load_frame(data_config(bad), 0)
    text = str(err.value)
    assert message.format(bad) in text and "\n" not in text and text.endswith(".")


def test_missing_weight_column_names_the_key(table):
    with pytest.raises(
        UserError, match="^data.weight_column names column 'weight', which .* does not have; its columns are"
    ):
        load_frame(data_config(table, weight_column="weight"), 0)


def test_config_mistakes_are_reported_together_before_data_loads(table):
    cfg = OmegaConf.structured(
        data_config(
            table,
            trials_column=None,
            sampler="balanced",
            targets=[{"name": "clicks", "type": "rate"}, {"name": "__weight__", "type": "regression"}],
        )
    )
    problems = _data_problems(cfg)
    assert "data.targets names '__weight__', a name seo-cli keeps for itself; rename the column." in problems
    assert any(p.startswith("target 'clicks' is type: rate, which needs the trials") for p in problems)
    assert any(
        p.startswith("data.sampler=balanced balances the classes of the first classification target")
        for p in problems
    )
    cfg = OmegaConf.structured(
        data_config(table, weight_column="clicks", targets=[{"name": "clicks", "type": "classification"}])
    )
    problems = _data_problems(cfg)
    assert "data.weight_column=clicks is also a target; weigh the rows by another column." in problems
    assert any(
        p.startswith("data.trials_column=impressions applies to type: rate targets only") for p in problems
    )


def test_balanced_sampler_with_overfit_batches_is_refused_at_start_up(tmp_path):
    done = run_command(
        "train",
        "data.sampler=balanced",
        "trainer.overfit_batches=2",
        "device=cpu",
        f"hydra.run.dir={tmp_path}",
    )
    assert done.code == 1
    assert (
        "data.sampler=balanced draws new rows each epoch, but trainer.overfit_batches trains on the same"
        in done.output
    )
    assert "Traceback" not in done.output


def test_stored_weight_and_rate_fields_are_checked(runs):
    state = torch.load(runs["train"] / "checkpoints" / "best.pt", weights_only=True)["preprocessing"]
    check_state(state)
    for key, value, field in [
        ("weight_column", 3, ".weight_column"),
        ("trials_column", "", ".trials_column"),
        ("targets", [t | {"std": 2.0} if t["type"] == RATE else t for t in state["targets"]], ".targets[1]"),
    ]:
        with pytest.raises(ValueError, match=f"^preprocessing{re_escape(field)} must be"):
            check_state(state | {key: value})


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# --- one tiny run end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(table, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weighted_runs")
    done = run_command(
        "train",
        "data=csv",
        f"data.path={table}",
        "data.numeric_columns=[x,z]",
        "data.targets=[{name:label,type:classification},{name:clicks,type:rate}]",
        "data.weight_column=w",
        "data.trials_column=impressions",
        "data.sampler=balanced",
        "model=mlp",
        "epochs=2",
        "batch_size=32",
        "device=cpu",
        "logger=[]",
        "scheduler=none",
        "trainer.progress=plain",
        f"hydra.run.dir={root / 'train'}",
    )
    assert done.code == 0, done.output[-3000:]
    assert "data.sampler=balanced: each epoch draws" in done.output
    checkpoint = root / "train" / "checkpoints" / "best.pt"
    done = run_command(
        "evaluate",
        f"checkpoint={checkpoint}",
        f"data.path={table}",
        "bootstrap=50",
        "report=false",
        "device=cpu",
        f"hydra.run.dir={root / 'eval'}",
    )
    assert done.code == 0, done.output[-3000:]
    done = run_command(
        "predict",
        f"checkpoint={checkpoint}",
        f"input={table}",
        f"output={root / 'scores.csv'}",
        "device=cpu",
        f"hydra.run.dir={root / 'predict'}",
    )
    assert done.code == 0, done.output[-3000:]
    return {"train": root / "train", "eval": root / "eval", "scores": root / "scores.csv"}


def test_seo_eval_weighs_rows_and_impressions_as_scikit_learn_on_seo_predicts_output(runs, table):
    frame, scores = pd.read_csv(table), pd.read_csv(runs["scores"])
    result = json.loads((runs["eval"] / "metrics.json").read_text())
    metrics, w = result["metrics"], frame["w"].to_numpy()
    assert metrics["eval/label/accuracy"] == pytest.approx(
        skm.accuracy_score(frame["label"], scores["label"], sample_weight=w), abs=1e-9
    )
    assert metrics["eval/label/roc_auc"] == pytest.approx(
        skm.roc_auc_score(frame["label"] == "top", scores["label_proba_top"], sample_weight=w), abs=1e-6
    )
    assert scores["clicks_rate"].between(0, 1).all()
    rate = np.divide(
        frame["clicks"], frame["impressions"], out=np.zeros(len(frame)), where=frame["impressions"] > 0
    )
    by_hand = rate_report(rate, scores["clicks_rate"].to_numpy(), w * frame["impressions"].to_numpy())
    for key in ("log_loss", "brier", "mae"):
        assert metrics[f"eval/clicks/{key}"] == pytest.approx(by_hand[key], rel=1e-5)
    low, high = result["intervals"]["eval/clicks/brier"]
    assert low <= metrics["eval/clicks/brier"] <= high


def test_scoring_rows_that_all_weigh_zero_or_have_no_trials_is_one_sentence():
    from seo_cli.evaluation import Scorer

    outputs, value = {"v": torch.zeros(3)}, torch.zeros(3)
    with pytest.raises(
        UserError, match="^every eval row weighs 0 in the weight column, so there is nothing to score; "
    ):
        Scorer([Target("v", "regression")]).score(outputs, {"v": value, WEIGHT_KEY: torch.zeros(3)}, "eval")
    labels = {
        "v": value,
        TRIALS_KEY: torch.tensor([0.0, 5.0, 0.0]),
        WEIGHT_KEY: torch.tensor([1.0, 0.0, 1.0]),
    }
    with pytest.raises(UserError, match="^rate target 'v' has no trials in the eval rows"):
        Scorer([Target("v", RATE)]).score(outputs, labels, "eval")


def test_a_checkpoint_whose_config_and_preprocessing_name_other_weight_columns_is_refused(runs, tmp_path):
    from seo_cli.loading import load_trained

    state = torch.load(runs["train"] / "checkpoints" / "best.pt", weights_only=True)
    state["config"] = state["config"].replace("weight_column: w", "weight_column: z")
    torch.save(state, tmp_path / "tampered.pt")
    with pytest.raises(
        UserError, match="data.weight_column and data.trials_column of its config are not the columns"
    ):
        load_trained(tmp_path / "tampered.pt", torch.device("cpu"), [])


def test_weights_trials_and_the_balanced_sampler_are_refused_with_parquet_shards():
    fields = {
        "source": "parquet_dir",
        "path": "crawl",
        "split_column": "split",
        "numeric_columns": ["x"],
        "weight_column": "w",
        "sampler": "balanced",
        "targets": [{"name": "label", "type": "classification"}],
    }
    problems = _data_problems(OmegaConf.merge(OmegaConf.structured(DataConfig), fields))
    assert (
        "data.weight_column is not read from Parquet shards yet; give the rows as a table file (data=csv), or remove it."
        in problems
    )
    assert any(
        p.startswith("data.sampler=balanced draws from a split held in memory, but Parquet shards")
        for p in problems
    )

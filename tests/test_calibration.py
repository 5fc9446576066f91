"""Calibration: ECE and Brier score against scikit-learn on fixed arrays, temperature scaling of an
over-confident model, and seo-eval calibrate=true's calibrated.pt through seo-eval and seo-predict."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF_DIR, smoke_checkpoint
from hydra import compose, initialize_config_dir
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from seo_cli.calibration import TemperatureScaled, fit_temperature, negative_log_likelihood
from seo_cli.checkpoint import load_checkpoint, save_checkpoint
from seo_cli.config import register_configs
from seo_cli.data import seo_pages
from seo_cli.errors import UserError
from seo_cli.evaluate import run_eval
from seo_cli.loading import load_trained
from seo_cli.metrics import classification_report, reliability_bins
from seo_cli.predict import run_predict

CPU = torch.device("cpu")


def compose_command(name: str, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=["device=cpu", *overrides])


def compose_eval(*overrides: str):
    return compose_command("eval", *overrides)


def quoted(path) -> str:
    return f"'{path}'"
RNG = np.random.default_rng(0)
P1 = RNG.uniform(size=600)
Y_BINARY = (RNG.uniform(size=600) < P1**1.5).astype(int)  # over-confident in the middle: a visible gap
PROBA3 = RNG.dirichlet([0.7, 0.7, 0.7], size=600)
Y3 = np.array([RNG.choice(3, p=p**2 / (p**2).sum()) for p in PROBA3])  # sharper than the probabilities say


def ece_from_calibration_curve(y: np.ndarray, score: np.ndarray, bins: int) -> float:
    """ECE from scikit-learn's bins: |share - mean score| per non-empty bin, weighted by its rows."""
    share, mean_score = calibration_curve(y, score, n_bins=bins, strategy="uniform")
    rows = np.histogram(score, bins=bins, range=(0, 1))[0]  # no score lies on an edge here
    return float(np.sum(rows[rows > 0] / len(y) * np.abs(share - mean_score)))


@pytest.mark.parametrize("bins", [15, 5])
def test_binary_ece_is_calibration_curves_gap_of_the_positive_class(bins):
    report = classification_report(Y_BINARY, np.c_[1 - P1, P1], bins=bins)
    expected = ece_from_calibration_curve(Y_BINARY, P1, bins)
    assert report["ece"] == pytest.approx(expected, abs=1e-12)
    assert report["ece"] > 0.05
    share, mean_score = calibration_curve(Y_BINARY, P1, n_bins=bins, strategy="uniform")
    np.testing.assert_allclose(report["reliability"]["accuracy"], share)
    np.testing.assert_allclose(report["reliability"]["confidence"], mean_score)
    assert sum(report["reliability"]["rows"]) == len(P1)


def test_multiclass_ece_is_top_label():
    report = classification_report(Y3, PROBA3)
    top = PROBA3.max(axis=1)
    expected = ece_from_calibration_curve((PROBA3.argmax(axis=1) == Y3).astype(int), top, 15)
    assert report["ece"] == pytest.approx(expected, abs=1e-12)


def test_ece_by_hand():
    # Top-label confidences 0.9 (right), 0.9 (wrong), 0.62 (right), 0.35 (wrong): three bins.
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.62, 0.18], [0.35, 0.33, 0.32]])
    y = np.array([0, 1, 1, 2])
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.62) + 1 / 4 * abs(0 - 0.35)
    assert classification_report(y, proba)["ece"] == pytest.approx(expected)


def test_brier_equals_scikit_learn():
    assert classification_report(Y_BINARY, np.c_[1 - P1, P1])["brier"] == pytest.approx(
        brier_score_loss(Y_BINARY, P1), abs=1e-12
    )
    by_hand = np.mean(((PROBA3 - np.eye(3)[Y3]) ** 2).sum(axis=1))
    report = classification_report(Y3, PROBA3)
    assert report["brier"] == pytest.approx(by_hand, abs=1e-12)
    assert report["brier"] == pytest.approx(brier_score_loss(Y3, PROBA3, labels=[0, 1, 2]), abs=1e-12)


def calibrated_logits(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from the softmax of those logits: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 4)) * 2
    p = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return logits, (p.cumsum(axis=1) > rng.uniform(size=(rows, 1))).argmax(axis=1)


def test_temperature_scaling_undoes_over_and_under_confidence():
    logits, y = calibrated_logits(6000, seed=1)
    fit, held_out = slice(0, 3000), slice(3000, None)
    for scale in (5.0, 0.3):
        scaled = logits * scale
        t = fit_temperature(scaled[fit], y[fit])
        assert t == pytest.approx(scale, rel=0.15)
        before = classification_report(y[held_out], torch.softmax(torch.from_numpy(scaled[held_out]), 1).numpy())
        after = classification_report(y[held_out], torch.softmax(torch.from_numpy(scaled[held_out] / t), 1).numpy())
        assert after["ece"] < 0.5 * before["ece"] and after["log_loss"] < before["log_loss"]
        assert after["ece"] < 0.03
        # The minimum of the NLL: a little to either side is worse.
        nll = negative_log_likelihood(scaled[fit], y[fit], t)
        assert nll < negative_log_likelihood(scaled[fit], y[fit], t * 1.02)
        assert nll < negative_log_likelihood(scaled[fit], y[fit], t / 1.02)


def test_temperature_scaled_divides_only_the_named_outputs():
    class Two(torch.nn.Module):
        def forward(self, batch):
            return {"intent": batch["x"], "ctr": batch["x"][:, 0]}

    x = torch.tensor([[2.0, -4.0]])
    out = TemperatureScaled(Two(), {"intent": 4.0}, "intent")({"x": x})
    torch.testing.assert_close(out["intent"], torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(out["ctr"], torch.tensor([2.0]))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """seo-eval calibrate=true on the MLP smoke run's best.pt: (best.pt, the eval dir, its result)."""
    best = smoke_checkpoint(tmp_path_factory, "mlp", "model=mlp")
    out = tmp_path_factory.mktemp("calibrated")
    result = run_eval(compose_eval(f"checkpoint={quoted(best)}", "calibrate=true", "bootstrap=0"), out)
    return best, out, result


def test_calibrate_fits_on_val_and_reports_before_and_after(calibrated):
    best, out, result = calibrated
    assert set(result["calibration"]) == {"intent", "quality"}
    for name, fitted in result["calibration"].items():
        assert 0.01 <= fitted["temperature"] <= 100 and fitted["temperature"] != 1.0
        assert fitted["val_log_loss_after"] < fitted["val_log_loss_before"]
        assert fitted["before"]["ece"] == result["metrics"][f"test/{name}/ece"]
        assert fitted["before"]["log_loss"] == result["metrics"][f"test/{name}/log_loss"]
    written = json.loads((out / "metrics.json").read_text())
    assert written["calibration"]["intent"]["temperature"] == result["calibration"]["intent"]["temperature"]
    report = (out / "report.md").read_text()
    assert "Temperature scaling: T = " in report and "plots/intent_reliability.png" in report
    assert (out / "plots" / "quality_reliability.png").stat().st_size > 10_000


def test_calibrated_checkpoint_round_trips_through_eval(calibrated, tmp_path):
    best, out, result = calibrated
    temperature = {name: fitted["temperature"] for name, fitted in result["calibration"].items()}
    trained = load_trained(out / "calibrated.pt", CPU, [])
    assert trained.temperature == temperature and isinstance(trained.model, TemperatureScaled)
    assert "optimizer" not in trained.state and "rng" not in trained.state  # an inference checkpoint
    again = run_eval(compose_eval(f"checkpoint={quoted(out / 'calibrated.pt')}", "bootstrap=0", "report=false"), tmp_path)
    assert again["temperature"] == temperature
    for name, fitted in result["calibration"].items():
        for key in ("ece", "log_loss", "brier"):
            assert again["metrics"][f"test/{name}/{key}"] == pytest.approx(fitted["after"][key], abs=1e-6)
        assert again["metrics"][f"test/{name}/accuracy"] == result["metrics"][f"test/{name}/accuracy"]


def test_predict_on_the_calibrated_checkpoint_writes_softmax_of_logits_over_t(calibrated, tmp_path):
    best, out, result = calibrated
    rows = tmp_path / "rows.csv"
    frame = seo_pages.generate_seo_pages(60, seed=5)
    frame.to_csv(rows, index=False)
    calibrated_pt = quoted(out / "calibrated.pt")
    run_predict(compose_command("predict", f"checkpoint={calibrated_pt}", f"input={rows}", f"output={tmp_path / 'p.csv'}"))
    written = pd.read_csv(tmp_path / "p.csv")
    plain = load_trained(best, CPU, [])
    with torch.no_grad():
        logits = plain.model.eval()(plain.preprocessor.transform_inputs(frame))
    for name, fitted in result["calibration"].items():
        names = plain.preprocessor.class_names[name]
        expected = torch.softmax(logits[name] / fitted["temperature"], dim=1).numpy()
        got = written[[f"{name}_proba_{c}" for c in names]].to_numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert not np.allclose(got, torch.softmax(logits[name], dim=1).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("temperature", "says"),
    [
        ({"intent": -1.0, "quality": 1.0}, "a number from 0.01 to 100 for target 'intent'"),
        ({"intent": math.nan, "quality": 1.0}, "for target 'intent' (not nan)"),
        ({"intent": 1.0, "quality": math.inf}, "for target 'quality' (not inf)"),
        ({"intent": 1.0}, "exactly the classification targets ['intent', 'quality']"),
        ({"intent": 1.0, "quality": 1.0, "ctr": 1.0}, "exactly the classification targets"),
        ({"intent": "2", "quality": 1.0}, "a mapping of target names to numbers"),
        ([1.0, 2.0], "a mapping of target names to numbers"),
    ],
)
def test_hostile_temperatures_are_refused_in_one_sentence(calibrated, tmp_path, temperature, says):
    _, out, _ = calibrated
    state = dict(load_checkpoint(out / "calibrated.pt"))
    path = save_checkpoint({**state, "temperature": temperature}, tmp_path / "bad.pt")
    with pytest.raises(UserError) as err:
        load_trained(path, CPU, [])
    message = str(err.value)
    assert "temperature must be" in message and says in message and "\n" not in message


def test_calibrate_mistakes_are_one_sentence(calibrated, tmp_path):
    best, _, _ = calibrated
    with pytest.raises(UserError, match="split=val would score them on the rows they were fitted on"):
        run_eval(compose_eval(f"checkpoint={quoted(best)}", "calibrate=true", "split=val"), tmp_path)
    with pytest.raises(UserError, match="calibration_bins=0 must be at least 1"):
        run_eval(compose_eval(f"checkpoint={quoted(best)}", "calibration_bins=0"), tmp_path)


def test_reliability_bins_of_an_empty_range_are_left_out():
    bins = reliability_bins(np.array([0, 1]), np.array([[0.95, 0.05], [0.02, 0.98]]), bins=10)
    assert bins["rows"] == [1, 1] and bins["confidence"] == pytest.approx([0.05, 0.98])
    assert bins["accuracy"] == [0.0, 1.0]

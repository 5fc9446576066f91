"""seo-train cv.folds=K and seo-eval on its run directory: one tiny in-process cross-validation run that the
tests share, plus the config errors of splits and folds (no data loaded)."""

import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers.commands import run_command
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error

from seo_cli.errors import UserError
from seo_cli.evaluate import score_checkpoint, score_ensemble, split_rows
from seo_cli.loading import load_trained
from seo_cli.validation import check_train_config

FOLDS = 3
TINY = (
    "debug=smoke",
    "model=mlp",
    "data.num_rows=300",
    "logger=none",
    "trainer.progress=plain",
    "device=cpu",
)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    """The run directory of ``seo-train cv.folds=3`` on 300 built-in rows, one epoch a fold."""
    run_dir = tmp_path_factory.mktemp("cv") / "run"
    done = run_command("train", *TINY, f"cv.folds={FOLDS}", f"hydra.run.dir={run_dir}")
    assert done.code == 0, done.output[-3000:]
    return run_dir


def fold_summaries(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / f"fold_{k}" / "summary.json").read_text()) for k in range(FOLDS)]


def test_each_fold_trains_in_its_own_directory_and_the_objective_is_their_mean(cv_run):
    folds = fold_summaries(cv_run)
    assert [Path(f["best_checkpoint"]) for f in folds] == [
        cv_run / f"fold_{k}" / "checkpoints" / "best.pt" for k in range(FOLDS)
    ]
    summary = json.loads((cv_run / "summary.json").read_text())
    values = [f["objective_value"] for f in folds]
    assert len(set(values)) == FOLDS  # three models, three scores
    assert summary["objective"] == "val/loss"
    assert summary["objective_value"] == pytest.approx(np.mean(values), rel=1e-12)
    assert summary["objective_std"] == pytest.approx(np.std(values), rel=1e-12)
    for key in ("val/intent/accuracy", "test/ctr/rmse", "test/loss"):
        assert summary["metrics"][key] == pytest.approx(
            np.mean([f["metrics"][key] for f in folds]), rel=1e-12
        )
        assert summary["metrics_std"][key] == pytest.approx(
            np.std([f["metrics"][key] for f in folds]), rel=1e-9
        )
    table = pd.read_csv(cv_run / "cv_summary.csv")
    assert table["fold"].tolist() == ["0", "1", "2", "mean", "std"]
    assert table["objective"].tolist() == pytest.approx([*values, np.mean(values), np.std(values)])
    document = json.loads((cv_run / "cv_summary.json").read_text())
    assert [row["objective"] for row in document["folds"]] == pytest.approx(values)
    assert document["mean"]["val/intent/accuracy"] == summary["metrics"]["val/intent/accuracy"]


def test_each_row_validates_in_exactly_one_fold_and_the_test_split_is_shared(cv_run):
    models = [
        load_trained(cv_run / f"fold_{k}" / "checkpoints" / "best.pt", torch.device("cpu"), [])
        for k in range(FOLDS)
    ]
    assert [m.fold for m in models] == [(k, FOLDS) for k in range(FOLDS)]
    vals = [split_rows(m, "val").index for m in models]
    trains = [split_rows(m, "train").index for m in models]
    tests = [split_rows(m, "test").index for m in models]
    pool = sorted(vals[0].tolist() + trains[0].tolist())
    assert sorted(np.concatenate(vals).tolist()) == pool  # a partition of the train and val rows
    assert all(sorted(t.tolist() + v.tolist()) == pool for t, v in zip(trains, vals, strict=True))
    assert all(t.equals(tests[0]) for t in tests) and not set(tests[0]) & set(pool)
    assert len(pool) + len(tests[0]) == 300
    # seo-eval rebuilds a fold's own validation rows: the numbers its training logged for best.pt.
    scored, _ = score_checkpoint(
        models[1], split_rows(models[1], "val"), "val", _eval_cfg(), torch.device("cpu"), _Clock()
    )
    assert scored.metrics["val/loss"] == pytest.approx(
        fold_summaries(cv_run)[1]["metrics"]["val/loss"], rel=1e-6
    )


def test_seo_eval_of_the_run_directory_scores_the_mean_of_the_folds(cv_run, tmp_path):
    done = run_command(
        "evaluate", f"checkpoint={cv_run}", "bootstrap=0", "report=false", f"hydra.run.dir={tmp_path}"
    )
    assert done.code == 0, done.output[-3000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        result["checkpoint"] == str(cv_run) and len(result["ensemble"]) == FOLDS and result["split"] == "test"
    )

    # Each fold scored alone, as seo-eval scores one checkpoint; the ensemble is the mean of their outputs.
    models = [load_trained(p, torch.device("cpu"), []) for p in map(Path, result["ensemble"])]
    frame = split_rows(models[0], "test")
    cfg = _eval_cfg()
    alone = [score_checkpoint(m, frame, "test", cfg, torch.device("cpu"), _Clock())[1] for m in models]
    intent = np.mean([a["intent"]["y_pred"] for a in alone], axis=0)
    ctr = np.mean([a["ctr"]["y_pred"] for a in alone], axis=0)
    y_intent, y_ctr = alone[0]["intent"]["y_true"], alone[0]["ctr"]["y_true"]
    metrics = result["metrics"]
    assert metrics["test/intent/log_loss"] == pytest.approx(
        log_loss(y_intent, intent, labels=range(4)), rel=1e-5
    )
    assert metrics["test/intent/accuracy"] == accuracy_score(y_intent, intent.argmax(axis=1))
    assert metrics["test/ctr/mse"] == pytest.approx(mean_squared_error(y_ctr, ctr), rel=1e-4)
    # ... and not any one fold's score.
    assert all(
        metrics["test/intent/log_loss"]
        != pytest.approx(log_loss(y_intent, a["intent"]["y_pred"], labels=range(4)))
        for a in alone
    )

    scored, predictions = score_ensemble(models, frame, "test", cfg, torch.device("cpu"), _Clock())
    np.testing.assert_allclose(scored.predictions["intent"], intent, atol=1e-6)
    np.testing.assert_allclose(predictions["ctr"]["y_pred"], ctr, rtol=1e-5)


def test_seo_eval_of_the_run_directory_refuses_another_split(cv_run, tmp_path):
    done = run_command(
        "evaluate", f"checkpoint={cv_run}", "split=val", "bootstrap=0", f"hydra.run.dir={tmp_path}"
    )
    assert done.code == 1 and "Traceback" not in done.output
    assert (
        f"split=val: each fold of the cross-validation run {cv_run} trained on the others' validation rows, so only "
        "the test split is new to all of them; use split=test" in done.output
    )


def test_resume_auto_keeps_the_finished_folds_and_resumes_the_interrupted_one(cv_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(cv_run, run_dir)
    (run_dir / "fold_2" / "summary.json").unlink()  # fold 2 stopped after writing its last.pt
    (run_dir / "cv_summary.json").unlink()
    before = json.loads((cv_run / "summary.json").read_text())
    done = run_command("train", *TINY, f"cv.folds={FOLDS}", f"hydra.run.dir={run_dir}", "resume=auto")
    assert done.code == 0, done.output[-3000:]
    assert done.output.count("finished before (resume=auto): its summary is kept") == 2
    resumed = json.loads((run_dir / "fold_2" / "summary.json").read_text())
    assert resumed["resumed_from"] == str(run_dir / "fold_2" / "checkpoints" / "last.pt")
    assert resumed["objective_value"] == pytest.approx(fold_summaries(cv_run)[2]["objective_value"])
    assert json.loads((run_dir / "summary.json").read_text())["objective_value"] == pytest.approx(
        before["objective_value"]
    )
    # A kept fold is checked against the command as any resumed checkpoint is.
    done = run_command(
        "train", *TINY, f"cv.folds={FOLDS}", f"hydra.run.dir={run_dir}", "resume=auto", "seed=7"
    )
    assert done.code == 1 and "Traceback" not in done.output and "seed: 42 -> 7" in done.output


def test_folds_train_without_the_tuning_trial_and_the_trial_hears_the_mean(
    compose_train, tmp_path, monkeypatch
):
    """Under hparams_search=optuna each fold runs as a plain run (no per-epoch reports to the pruner) and the
    sweeper reads the mean: seo_cli.train.train is replaced by a recorder, so nothing trains."""
    import seo_cli.train as train_module

    seen = []

    def fake_train(cfg, run_dir):
        seen.append((cfg.cv.fold, cfg.tuning.trial_id, run_dir.name))
        return {
            "status": "ok",
            "objective_value": 1.0 + cfg.cv.fold,
            "metrics": {"val/loss": 1.0 + cfg.cv.fold},
        }

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(train_module, "build_trial", lambda cfg, run_dir: None)
    cfg = compose_train(*TINY, "cv.folds=4", "tuning.trial_id=7")
    summary = train_module.cross_validate(cfg, tmp_path)
    assert seen == [(k, None, f"fold_{k}") for k in range(4)]
    assert summary["objective_value"] == 2.5 and summary["metrics"] == {"val/loss": 2.5}
    assert cfg.cv.fold is None and cfg.tuning.trial_id == 7  # the run's own config is left as it was


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            ("data.split_by=group",),
            "data.split_by=group needs data.group_column, the column naming each row's group (e.g. site or query); "
            "set it, or use data.split_by=random.",
        ),
        (
            ("data.split_by=time",),
            "data.split_by=time needs data.time_column, a column of dates or numbers ordering the rows; set it, or "
            "use data.split_by=random.",
        ),
        (
            ("data.time_column=day",),
            "data.time_column=day orders only a time split; set data.split_by=time or remove it.",
        ),
        (
            (
                "data=csv",
                "data.path=p.csv",
                "data.targets=[{name:y,type:regression}]",
                "data.numeric_columns=[x]",
                "data.split_column=part",
                "data.split_by=group",
                "data.group_column=site",
            ),
            "data.split_column and data.split_by=group both choose the splits; keep one of them.",
        ),
        (("cv.folds=1",), "cv.folds=1 must be 2 or more, or 0 or null for no cross-validation."),
        (
            ("cv.fold=1",),
            "cv.fold picks one fold of a cross-validation; set cv.folds too (e.g. cv.folds=5), or remove cv.fold.",
        ),
        (
            ("cv.folds=3", "cv.fold=3"),
            "cv.fold=3 must be from 0 to 2 (the folds of cv.folds=3), or null for all.",
        ),
        (
            ("cv.folds=3", "data.split_by=time", "data.time_column=day"),
            "cv.folds rotates validation over all train and val rows, which under data.split_by=time would train on "
            "the future; use data.split_by=random or group, or remove cv.folds.",
        ),
        (
            ("cv.folds=3", "device=ddp", "device.type=cpu"),
            "cv.folds does not combine with device=ddp yet; train the folds on one device, or remove cv.folds.",
        ),
        (
            ("cv.folds=3", "resume=last.pt"),
            "resume=last.pt names one checkpoint, and a cross-validation run has one per fold; use resume=auto with "
            "hydra.run.dir=<the run directory>, or set cv.fold to resume that fold.",
        ),
    ],
    ids=lambda value: value[0] if isinstance(value, tuple) else None,
)
def test_split_and_fold_mistakes_are_one_sentence_each(compose_train, overrides, problem):
    with pytest.raises(UserError) as caught:
        check_train_config(compose_train(*TINY, *overrides))
    assert problem in str(caught.value).splitlines()


def test_a_mistake_exits_non_zero_without_a_traceback(tmp_path):
    done = run_command("train", *TINY, "cv.folds=1", "data.split_by=group", f"hydra.run.dir={tmp_path}")
    assert done.code == 1 and "Traceback" not in done.output
    assert (
        "cv.folds=1 must be 2 or more" in done.output
        and "data.split_by=group needs data.group_column" in done.output
    )


def _eval_cfg():
    return OmegaConf.create({"eval_batch_size": 1024})


class _Clock:
    """A Stopwatch that times nothing."""

    def __call__(self, stage):
        return nullcontext()


def test_cv_fold_trains_that_fold_alone_in_the_run_directory(tmp_path, monkeypatch):
    """``cv.folds=3 cv.fold=1``: the console script trains fold 1 only, as a plain run (train replaced by a
    recorder: the dispatch is what is tested; the fold's rows are the tests above)."""
    import seo_cli.train as train_module

    seen = []

    def fake_train(cfg, run_dir):
        seen.append((cfg.cv.folds, cfg.cv.fold, run_dir))
        return {"status": "ok", "objective_value": 0.5}

    monkeypatch.setattr(train_module, "train", fake_train)
    done = run_command("train", *TINY, "cv.folds=3", "cv.fold=1", f"hydra.run.dir={tmp_path}")
    assert done.code == 0, done.output[-3000:]
    assert seen == [(3, 1, tmp_path)]


@pytest.mark.parametrize(
    "cv", [{"folds": 3, "fold": 3}, {"folds": "3", "fold": 0}, {"folds": 3, "fold": True}]
)
def test_a_checkpoint_with_a_forged_fold_is_refused(cv_run, tmp_path, cv):
    state = torch.load(cv_run / "fold_0" / "checkpoints" / "best.pt", weights_only=True)
    config = yaml.safe_load(state["config"])
    state["config"] = yaml.safe_dump(config | {"cv": cv})
    torch.save(state, tmp_path / "forged.pt")
    with pytest.raises(
        UserError, match=r"forged.pt: cv.fold and cv.folds of its config must be whole numbers with"
    ):
        load_trained(tmp_path / "forged.pt", torch.device("cpu"), [])


def test_a_new_file_is_scored_whole_without_the_split_columns(tmp_path):
    """seo-eval data.path=<file> of a model split by site or by date: the file needs neither column."""
    from types import SimpleNamespace

    from seo_cli.config import DataConfig, TargetConfig
    from seo_cli.evaluate import evaluation_rows

    path = tmp_path / "new.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "a"]}).to_csv(path, index=False)
    for split in ({"split_by": "group", "group_column": "site"}, {"split_by": "time", "time_column": "date"}):
        data = DataConfig(
            source="file",
            path="train.csv",
            numeric_columns=["x"],
            targets=[TargetConfig("label", "classification")],
            **split,
        )
        cfg = OmegaConf.create(
            {"data": {"path": str(path), "format": None, "column_names": None, "encoding": None}}
        )
        frame, name = evaluation_rows(SimpleNamespace(data=data, seed=0), cfg)
        assert name == "eval" and frame["x"].tolist() == [1.0, 2.0, 3.0]

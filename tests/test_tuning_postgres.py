"""Three `seo-train hparams_search=optuna` processes on one PostgreSQL study, as on three machines: a
throw-away server (tests/helpers/postgres.py), 12 trials between them, each run once, each process
writing its own job folders and summary, and the study's summary rebuilt from the storage."""

import json
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from helpers.postgres import missing, postgres_server

from seo_cli.study_storage import open_storage
from seo_cli.sweep import summarize_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture
def postgres_url():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'seo-cli[postgres]'")
    with postgres_server() as url:
        yield url


@pytest.mark.slow
def test_three_processes_share_one_postgres_study_and_run_12_trials_once_each(postgres_url, tmp_path):
    open_storage(postgres_url)  # Optuna's tables, once, before three processes race to make them
    sweeps = [tmp_path / f"machine{i}" for i in range(3)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seo_cli.train",
                "hparams_search=optuna",
                "debug=smoke",
                "logger=none",
                "hydra.sweeper.n_trials=12",
                "hydra.sweeper.study_name=shared",
                # The quotes keep the URL's ?host=... one value on Hydra's command line.
                f"hydra.sweeper.storage='{postgres_url}'",
                f"hydra.sweep.dir={sweep}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for sweep in sweeps
    ]
    outputs = [worker.communicate(timeout=300)[0].decode(errors="replace") for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]

    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials()
    assert [t.number for t in trials] == list(range(12))  # 12 distinct trials, no 13th
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert not any(t.user_attrs.get("killed") for t in trials)

    # Each process wrote the folders and summary rows of its own trials: 12 between them, none twice.
    rows = pd.concat(
        [pd.read_csv(s / "summary.csv", dtype={"job": str}) for s in sweeps if (s / "summary.csv").exists()]
    )
    assert sorted(rows["job"], key=int) == [str(n) for n in range(12)]
    folders = {s.name: sorted(p.parent.name for p in s.glob("*/summary.json")) for s in sweeps}
    assert sum(len(jobs) for jobs in folders.values()) == 12
    assert sum(1 for jobs in folders.values() if jobs) >= 2, folders  # they did share the work
    for trial in trials:
        [job] = [s / str(trial.number) for s in sweeps if (s / str(trial.number) / "summary.json").exists()]
        summary = json.loads((job / "summary.json").read_text())
        assert f"tuning.trial_id={trial._trial_id}" in summary["overrides"]
        if summary["status"] == "ok":
            assert trial.value == pytest.approx(summary["objective_value"])

    # The whole study's table, rebuilt from the storage: the 12 rows the processes wrote.
    rebuilt = summarize_study(postgres_url, "shared", "val/loss").set_index("job")
    assert sorted(rebuilt.index, key=int) == [str(n) for n in range(12)]
    for _, row in rows.iterrows():
        assert rebuilt.loc[row["job"], "status"] == row["status"]
        assert rebuilt.loc[row["job"], "objective"] == pytest.approx(row["objective"])

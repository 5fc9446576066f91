"""Tuning in parallel and across machines: the storages, the claim of the next trial under a lock shared by
processes, abandoned trials, GPU slots, n_jobs trial processes and the summary rebuilt from a storage.
tests/test_tuning_postgres.py runs three seo-train processes on one PostgreSQL study."""

import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from helpers.commands import run_command
from helpers.sweeps import sweep_process

from seo_cli.errors import UserError
from seo_cli.study_storage import open_storage, shown, storage_url
from seo_cli.sweep import summarize_study
from seo_cli.tuning import (
    HEARTBEAT,
    STALE_AFTER_S,
    WORKER,
    StudySettings,
    TrialProcesses,
    gpu_slots,
    is_abandoned,
    process_start,
    run_study,
    this_worker,
    trial_slots,
    visible_gpus,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_gpu_slots_give_each_trial_running_at_once_gpus_of_its_own():
    assert gpu_slots(["0", "1", "2", "3"], 4, 1) == [["0"], ["1"], ["2"], ["3"]]
    assert gpu_slots(["0", "1", "2", "3"], 2, 1) == [["0"], ["1"]]
    # A DDP trial takes device.num_devices GPUs.
    assert gpu_slots(["0", "1", "2", "3"], 2, 2) == [["0", "1"], ["2", "3"]]
    assert gpu_slots(["4", "6", "7"], 1, 3) == [["4", "6", "7"]]
    # No GPU: the trials share the CPU, and nothing is set.
    assert gpu_slots([], 3, 2) == [[], [], []]
    with pytest.raises(
        UserError,
        match=r"hydra.sweeper.n_jobs=3 trials at once with 2 GPU\(s\) each need 6 GPUs and 4 are visible; use hydra.sweeper.n_jobs=2 or fewer",
    ):
        gpu_slots(["0", "1", "2", "3"], 3, 2)
    with pytest.raises(UserError, match=r"device.num_devices=4 but 2 GPU\(s\) are visible"):
        gpu_slots(["0", "1"], 1, 4)


def test_trial_slots_follow_the_trials_device_config():
    four = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert trial_slots(4, "auto", "single", 1, four, 4) == [["0"], ["1"], ["2"], ["3"]]
    assert trial_slots(2, "cuda", "ddp", 2, four, 4) == [["0", "1"], ["2", "3"]]  # device=ddp num_devices=2
    assert trial_slots(2, "cpu", "ddp", 2, four, 4) == [[], []]  # CPU trials: no GPU given out
    assert trial_slots(3, "auto", "single", 1, {}, 0) == [[], [], []]  # a machine without GPUs
    with pytest.raises(UserError, match=r"hydra.sweeper.n_jobs=3 .* use hydra.sweeper.n_jobs=2 or fewer"):
        trial_slots(3, "auto", "ddp", 2, four, 4)


def test_visible_gpus_are_cuda_visible_devices_entries_or_all():
    assert visible_gpus({}, 3) == ["0", "1", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}, 2) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5,7"}, 3) == ["2", "5", "7"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 0) == []
    assert visible_gpus({}, 0) == []


def test_storage_strings_and_their_mistakes(tmp_path):
    journal = tmp_path / "study.log"
    assert storage_url(str(journal)) == str(journal)
    assert isinstance(open_storage(str(journal)), optuna.storages.JournalStorage)
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'o.db'}"), optuna.storages.RDBStorage)
    with pytest.raises(
        UserError,
        match=r"hydra.sweeper.storage='optuna.db' is not a storage; use sqlite:///path/optuna.db, postgresql://",
    ):
        storage_url("optuna.db")
    with pytest.raises(UserError, match=rf"the folder {tmp_path / 'nowhere'} does not exist"):
        storage_url(str(tmp_path / "nowhere" / "study.log"))
    with pytest.raises(UserError, match=r"hydra.sweeper.storage=nosuchdb://x/y is not a storage URL"):
        open_storage("nosuchdb://x/y")
    # MySQL's default driver (mysqlclient) is not installed here: named, with the fix.
    with pytest.raises(
        UserError,
        match=r"storage=mysql://u:\*\*\*@h/db needs the Python database driver MySQLdb, which is not installed; install it",
    ):
        open_storage("mysql://u:secret@h/db")
    with pytest.raises(
        UserError,
        match=r"storage=sqlite:///.*/missing/o.db: cannot open the database \(unable to open database file\)",
    ):
        open_storage(f"sqlite:///{tmp_path / 'missing' / 'o.db'}")
    assert shown("postgresql://seo:secret@db.example/tuning") == "postgresql://seo:***@db.example/tuning"


def test_cli_storage_and_n_jobs_mistakes_are_one_sentence(tmp_path):
    base = ["hparams_search=optuna", "debug=smoke", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = run_command("train", *base, "hydra.sweeper.storage=optuna.db")
    assert done.code == 1 and "Traceback" not in done.output
    assert "hydra.sweeper.storage='optuna.db' is not a storage; use sqlite:///path/optuna.db" in done.output
    done = run_command("train", *base, "hydra.sweeper.n_jobs=0")
    assert done.code == 1 and "Traceback" not in done.output
    assert "hydra.sweeper.n_jobs=0 must be a whole number of at least 1 (trials run at once)." in done.output
    assert not list((tmp_path / "sweep").glob("*/summary.json"))  # no trial ran


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_three_sweeps_sharing_a_storage_run_n_trials_between_them_and_none_twice(tmp_path, kind):
    """Three processes on one study: the claim lock makes counting and asking one step, so together they
    run exactly n_trials, each once, and their seeds differ, so no point is drawn twice."""
    storage = f"sqlite:///{tmp_path / 'o.db'}" if kind == "sqlite" else str(tmp_path / "study.log")
    open_storage(storage)  # the tables, once, before three processes race to make them
    ran = tmp_path / "ran.txt"
    spawn = multiprocessing.get_context("spawn")  # a clean interpreter, as a second seo-train would be
    start = spawn.Barrier(3)
    processes = [spawn.Process(target=sweep_process, args=(storage, i, str(ran), start)) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    trials = optuna.load_study(study_name="shared", storage=open_storage(storage)).get_trials()
    assert len(trials) == 12 and [t.number for t in trials] == list(range(12))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = [tuple(map(int, line.split())) for line in ran.read_text().splitlines()]
    assert sorted(number for _, number in runs) == list(range(12))  # each trial run once
    assert len({t.params["x"] for t in trials}) == 12
    assert len({index for index, _ in runs}) >= 2, runs  # they did share the work


def running_trial(worker, heartbeat):
    return SimpleNamespace(system_attrs={WORKER: worker, HEARTBEAT: heartbeat})


def test_a_running_trial_is_abandoned_only_when_its_sweep_process_is_gone_or_silent():
    me, now = this_worker(), time.time()
    host = socket.gethostname()
    parent = os.getppid()  # alive, another process of this machine
    alive = {"host": host, "pid": parent, "started": process_start(parent), "run": "r"}
    assert not is_abandoned(running_trial(alive, now), me, now)
    assert not is_abandoned(running_trial(me, now), me, now)  # one of this sweep's own, running now
    # Another run_study of this process (the sweep before, cut off): nothing runs it any more.
    assert is_abandoned(running_trial(me | {"run": "earlier"}, now), me, now)
    assert is_abandoned(
        running_trial(alive | {"started": -1}, now), me, now
    )  # its pid is another process's now
    gone = {"host": host, "pid": 2**22 + 12345, "started": None, "run": "r"}  # above pid_max: no such process
    assert is_abandoned(running_trial(gone, now), me, now)
    # Another machine: alive while its heartbeat is recent; abandoned once it has been silent too long.
    remote = {"host": "another-machine", "pid": 1, "started": 1, "run": "r"}
    assert not is_abandoned(running_trial(remote, now - 60), me, now)
    assert is_abandoned(running_trial(remote, now - STALE_AFTER_S - 1), me, now)
    assert is_abandoned(SimpleNamespace(system_attrs={}), me, now)  # asked outside any sweep


# A trial process as TrialProcesses starts it, minus the training: it writes the summary.json seo-train
# would, with what it was given (its GPUs, its threads) and when it ran.
FAKE_TRIAL = """
import glob, json, os, signal, sys, time
args = {k: v.strip("'") for k, v in (a.split("=", 1) for a in sys.argv[1:])}
job, start = args["hydra.run.dir"], time.time()
def write(status):
    summary = {"status": status, "objective_value": float(args["x"]) ** 2, "overrides": sys.argv[1:],
               "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ["OMP_NUM_THREADS"],
               "start": start, "end": time.time()}
    open(os.path.join(job, "summary.json"), "w").write(json.dumps(summary))
signal.signal(signal.SIGTERM, lambda *_: (write("interrupted"), sys.exit(143)))
open(job + ".started", "w").close()
# Up to 10 s for a second trial to be running too: interpreters start slowly on a loaded machine.
deadline = time.time() + 10
while len(glob.glob(os.path.join(os.path.dirname(job), "*.started"))) < 2 and time.time() < deadline:
    time.sleep(0.02)
start = time.time()
time.sleep(float(os.environ.get("FAKE_TRIAL_S", "0.3")))
write("ok")
"""


def fake_settings(storage: str, **overrides) -> StudySettings:
    fields = dict(
        study_name="s",
        storage=storage,
        direction="minimize",
        sampler="random",
        pruner="none",
        n_trials=5,
        seed=0,
        max_failure_rate=0.5,
        params={"x": "interval(-2.0, 2.0)"},
        n_jobs=2,
    )
    return StudySettings(**(fields | overrides))


def test_trial_processes_run_n_jobs_at_once_each_on_gpus_of_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sweep = tmp_path / "sweep"
    slots = gpu_slots(["0", "1", "2", "3"], 2, 2)  # two DDP trials of two GPUs at once
    launch = TrialProcesses([sys.executable, "-c", FAKE_TRIAL], sweep, slots, threads=3)
    study = run_study(fake_settings(str(tmp_path / "study.log")), ["epochs=1"], launch)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    runs = {t.number: json.loads((sweep / str(t.number) / "summary.json").read_text()) for t in trials}
    for trial in trials:
        run = runs[trial.number]
        assert trial.value == pytest.approx(run["objective_value"])  # told the study from its own summary
        assert run["gpus"] in ("0,1", "2,3") and run["threads"] == "3"
        assert (sweep / str(trial.number) / "console.log").is_file()
        assert "hydra.mode=RUN" in run["overrides"] and "epochs=1" in run["overrides"]
    # Two at a time, never more, and two trials running together never share a GPU.
    for a in runs.values():
        overlapping = [
            b for b in runs.values() if b is not a and b["start"] < a["end"] and a["start"] < b["end"]
        ]
        assert len(overlapping) <= 1 and all(b["gpus"] != a["gpus"] for b in overlapping)
    assert any(
        b is not a and b["start"] < a["end"] and a["start"] < b["end"]
        for a in runs.values()
        for b in runs.values()
    )


def test_sigterm_to_a_parallel_sweep_stops_its_trials_and_a_rerun_runs_them_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRIAL_S", "60")
    storage, sweep = str(tmp_path / "study.log"), tmp_path / "sweep"
    launch = TrialProcesses([sys.executable, "-c", FAKE_TRIAL], sweep, [[], []], threads=1)

    def kill_when_both_run():
        while len(list(sweep.glob("*.started"))) < 2:  # written once their SIGTERM handlers are in place
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill <sweep pid>` or a scheduler would

    previous = signal.signal(signal.SIGTERM, launch.pass_on)  # what the sweeper installs
    try:
        threading.Thread(target=kill_when_both_run, daemon=True).start()
        started = time.time()
        with pytest.raises(SystemExit) as stop:
            run_study(fake_settings(storage), [], launch)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.value.code == 128 + signal.SIGTERM and time.time() - started < 30
    # Both trials got the signal and stopped; no third one started.
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert [json.loads((sweep / j / "summary.json").read_text())["status"] for j in "01"] == [
        "interrupted"
    ] * 2
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    cut = study.get_trials()
    assert [t.state for t in cut] == [optuna.trial.TrialState.RUNNING] * 2  # not told: cut off

    monkeypatch.setenv("FAKE_TRIAL_S", "0")
    again = TrialProcesses([sys.executable, "-c", FAKE_TRIAL], tmp_path / "again", [[], []], threads=1)
    study = run_study(fake_settings(storage, n_trials=2), [], again)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert all(t.user_attrs == {"killed": True} for t in trials[:2])
    assert sorted(t.params["x"] for t in trials[2:]) == sorted(t.params["x"] for t in cut)  # the same points


@pytest.mark.slow
def test_n_jobs_runs_trials_at_once_in_processes_of_their_own_on_a_journal_file(tmp_path):
    """seo-train hparams_search=optuna hydra.sweeper.n_jobs=2 with 2 trials on a journal storage (a trial process starts in about 10 s: the slots reused are tested above)."""
    journal, sweep = tmp_path / "study.log", tmp_path / "sweep"
    done = run_command(
        "train",
        "hparams_search=optuna",
        "debug=smoke",
        "logger=none",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.storage={journal}",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.code == 0, done.output[-3000:]
    # Two at once: the second trial started before the first ended.
    out = done.output
    assert out.index("Trial 1 started") < out.index("Trial 0 ended"), out[-3000:]
    trials = optuna.load_study(study_name="seo", storage=open_storage(str(journal))).get_trials()
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    for trial in trials:
        job = sweep / str(trial.number)
        summary = json.loads((job / "summary.json").read_text())
        # Each trial ran as its own process, in its own folder, and reported to the study itself.
        assert (job / "console.log").is_file() and (job / "train.log").is_file()
        assert f"tuning.trial_id={trial._trial_id}" in summary["overrides"]
        assert trial.system_attrs["seo:job_dir"]["path"] == str(job)
        if summary["status"] == "ok":
            assert trial.value == pytest.approx(summary["objective_value"])
    frame = pd.read_csv(sweep / "summary.csv", dtype={"job": str})
    assert sorted(frame["job"]) == ["0", "1"]
    # The summary rebuilt from the storage alone says the same.
    rebuilt = summarize_study(str(journal), "seo", "val/loss")
    assert sorted(rebuilt["job"]) == ["0", "1"]
    by_job = rebuilt.set_index("job")
    for _, row in frame.iterrows():
        assert by_job.loc[row["job"], "status"] == row["status"]
        assert by_job.loc[row["job"], "objective"] == pytest.approx(row["objective"])
        assert by_job.loc[row["job"], "folder"] == f"{socket.gethostname()}:{sweep / row['job']}"


def test_the_summary_of_a_study_is_rebuilt_from_its_storage(tmp_path, caplog):
    """Rows from the job folders this machine can read, from the storage for the others."""
    journal = str(tmp_path / "study.log")
    storage = open_storage(journal)
    study = optuna.create_study(study_name="s", storage=storage)
    here = tmp_path / "sweep" / "0"
    here.mkdir(parents=True)
    summary = {
        "status": "ok",
        "objective_value": 0.5,
        "overrides": ["lr=0.1", "tuning.trial_id=0"],
        "metrics": {"val/loss": 0.5},
    }
    (here / "summary.json").write_text(json.dumps(summary))
    for lr, value, folder in ((0.1, 0.5, here), (0.2, 0.25, "/elsewhere/sweep/1")):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1.0)})
        storage.set_trial_param(trial._trial_id, "lr", lr, optuna.distributions.FloatDistribution(0.01, 1.0))
        host = socket.gethostname() if folder == here else "another-machine"
        storage.set_trial_system_attr(trial._trial_id, "seo:job_dir", {"host": host, "path": str(folder)})
        study.tell(trial, value)
    killed = study.ask()
    storage.set_trial_user_attr(killed._trial_id, "killed", True)
    study.tell(killed, state=optuna.trial.TrialState.FAIL)
    running = study.ask()  # a trial another process runs now: its folder has no summary.json yet
    (tmp_path / "sweep" / "3" / ".hydra").mkdir(parents=True)
    storage.set_trial_system_attr(
        running._trial_id, "seo:job_dir", {"host": "h", "path": str(tmp_path / "sweep" / "3")}
    )

    frame = summarize_study(journal, "s", "val/loss")
    assert list(frame["job"]) == ["1", "0", "3", "2"]  # best first, killed last
    assert frame.iloc[2]["status"] == "running"
    remote, local, cut = (frame.iloc[i] for i in (0, 1, 3))
    assert (remote["status"], remote["objective"], remote["folder"]) == (
        "ok",
        0.25,
        "another-machine:/elsewhere/sweep/1",
    )
    assert (local["status"], local["objective"], local["val/loss"]) == ("ok", 0.5, 0.5)
    assert local["folder"] == f"{socket.gethostname()}:{here}"
    assert cut["status"] == "killed" and cut["folder"] == ""

    from seo_cli.sweep import main

    main([journal, "--study-name", "s", "--out", str(tmp_path / "table")])
    written = pd.read_csv(tmp_path / "table" / "summary.csv", dtype={"job": str})
    assert list(written["job"]) == ["1", "0", "3", "2"]
    with pytest.raises(SystemExit) as stop:
        main([journal, "--study-name", "nope"])
    assert stop.value.code == 1
    assert f"{journal} holds no study 'nope'; give --study-name, one of: s." in caplog.text


def test_a_job_folder_without_summary_is_running_while_the_process_in_its_lock_file_lives(tmp_path):
    """Processes sharing a sweep folder: another's trial in progress is not a killed row."""
    from seo_cli.sweep import summarize

    for job, pid in (("0", os.getppid()), ("1", 2**22 + 12345)):  # alive; above pid_max, so gone
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("- lr=0.1\n")
        (tmp_path / job / ".seo-train.lock").write_text(f"{pid}\n")
    frame = summarize(tmp_path, "val/loss").set_index("job")
    assert frame.loc["0", "status"] == "running" and frame.loc["1", "status"] == "killed"

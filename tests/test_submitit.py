"""SLURM through submitit, on submitit's local executor: the same launcher, job folders, warning signal and
requeue as on a cluster, with the jobs as real processes of this machine.

seo-train's console script runs in this process and submits the jobs (tests/helpers/commands.py); each
job's task is a process of its own that imports torch (about 5 s), so one sweep is shared: job 0 runs
through, job 1 is sent the pre-emption signal (SIGUSR2) at step 13 by a test callback
(tests/helpers/fault_inject.py), writes last.pt, is requeued with resume=auto and finishes in the same
job directory, bit for bit the run that was never stopped. A device=ddp job runs its two ranks as two
tasks of one job, without DDP workers of its own. The SLURM variables -> rank mapping is checked on
submitit's own SLURM environment; a job submitit will not requeue any more runs in this process.
"""

import csv
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, read_jsonl
from helpers.commands import run_command
from helpers.fault_inject import injected
from hydra import compose, initialize_config_dir
from submitit.slurm.slurm import SlurmJobEnvironment

from hydra_plugins.seo_submitit_launcher.submitit_launcher import LocalLauncher, MissingSubmitit
from seo_cli import scheduler
from seo_cli.checkpoint import load_checkpoint
from seo_cli.config import register_configs
from seo_cli.errors import UserError

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
# 140 training rows: 9 optimizer steps of 16 per epoch, 18 in all; the MLP keeps each step short.
RUN = ["debug=smoke", "model=mlp", "data.num_rows=200", "epochs=2", "logger=none", "trainer.progress=plain"]
RATES = ("0.001", "0.002")
PREEMPT = [
    "+hydra.callbacks.fault._target_=helpers.fault_inject.SignalJobAtStep",
    "+hydra.callbacks.fault.job_num=1",
    "+hydra.callbacks.fault.step=13",
]


def seo_train_jobs(*overrides: str):
    """seo-train in this process, its submitit jobs below it, able to import the test callbacks."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    )
    try:
        done = run_command("train", "-m", "hydra/launcher=submitit_local", *overrides)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert done.code == 0, done.output[-5000:]
    assert "Traceback" not in done.output, done.output[-5000:]
    return done


def submitit_logs(sweep: Path) -> str:
    """What the sweep's tasks printed (submitit's log lines among them), every attempt (appended)."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_log.out")))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("submitit") / "sweep"
    seo_train_jobs(*RUN, *PREEMPT, f"learning_rate={','.join(RATES)}", f"hydra.sweep.dir={sweep}")
    return sweep


def test_a_two_job_sweep_on_the_local_executor_ends_with_both_jobs_results(sweep):
    rows = {row["job"]: row for row in csv_rows(sweep / "summary.csv")}
    assert sorted(rows) == ["0", "1"]
    for job, rate in zip(("0", "1"), RATES, strict=True):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["global_step"] == 18
        assert f"learning_rate={rate}" in summary["overrides"]
        assert float(rows[job]["objective"]) == pytest.approx(summary["objective_value"])
    assert rows["0"]["objective"] != rows["1"]["objective"]
    # Each job ran as a submitit job of its own, whose folder holds its task's result.
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2


def test_a_preempted_job_writes_last_pt_requeues_and_ends_as_the_run_never_stopped(sweep, tmp_path):
    job = sweep / "1"
    log = (job / "train.log").read_text()
    # The warning came as step 14 began: the loop finished the step, saved it and handed the signal to
    # submitit, which requeued the job with resume=auto; the requeued job went on from step 14.
    assert "SIGUSR2 received: saving last.pt after the current step." in log
    assert f"Pre-empted at step 14; {job / 'checkpoints' / 'last.pt'} is saved." in log
    assert "Resumed at epoch 1, step 14" in log
    # submitit requeued one job, job 1, which started a second time (three starts in the sweep).
    requeued = re.findall(r"^submitit INFO .* - Requeued job (\d+)", submitit_logs(sweep), re.MULTILINE)
    assert len(requeued) == 1 and submitit_logs(sweep).count("Starting with JobEnvironment") == 3
    overrides = (job / ".hydra" / "overrides.yaml").read_text()
    assert "resume=auto" in overrides and f"learning_rate={RATES[1]}" in overrides
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["resumed_from"] == str(job / "checkpoints" / "last.pt")
    assert "resume=auto" not in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()  # job 0 ran through

    straight = tmp_path / "straight"
    done = run_command("train", *RUN, f"learning_rate={RATES[1]}", f"hydra.run.dir={straight}")
    assert done.code == 0, done.output[-3000:]
    expected, got = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, job))
    assert expected["model"].keys() == got["model"].keys()
    for name in expected["model"]:
        assert torch.equal(expected["model"][name], got["model"][name]), name
    assert without_timing(got["history"]) == without_timing(expected["history"])
    # metrics.jsonl too: the rows of steps after the checkpoint were dropped on resume, then logged again.
    assert without_timing(read_jsonl(job / "metrics.jsonl")) == without_timing(
        read_jsonl(straight / "metrics.jsonl")
    )


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(("speed/", "memory/"))} for row in rows]


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def slurm_task(
    monkeypatch, *, procid: int, localid: int, ntasks: int, nodes: int, nodelist: str, job: str = "4242"
):
    """submitit's SLURM environment of one task, from the variables srun sets."""
    for name, value in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": job,
        "SLURM_NTASKS": str(ntasks),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODEID": str(procid // (ntasks // nodes)),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_JOB_NODELIST": nodelist,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return SlurmJobEnvironment()


def test_slurm_task_variables_map_to_torch_distributed_ranks(monkeypatch):
    # Task 5 of 8 on two nodes of 4: the second node's second GPU; rank 0 listens on the first node.
    job = slurm_task(monkeypatch, procid=5, localid=1, ntasks=8, nodes=2, nodelist="gpu[017-018]")
    assert scheduler.rank_environment(job, {}) == {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu017",
        "MASTER_PORT": str(scheduler.master_port("4242")),
    }
    # Every task of a job computes the same port, below the ephemeral range; two array tasks differ.
    assert 15000 <= scheduler.master_port("4242") < 30000
    assert scheduler.master_port("4242_0") != scheduler.master_port("4242_1")
    # What the user exported wins.
    given = scheduler.rank_environment(job, {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("10.0.0.1", "29400")
    # On one node rank 0 is on this machine.
    job = slurm_task(monkeypatch, procid=1, localid=1, ntasks=2, nodes=1, nodelist="gpu017")
    assert scheduler.rank_environment(job, {})["MASTER_ADDR"] == "127.0.0.1"


def test_a_ddp_task_joins_as_its_rank_and_task_counts_that_do_not_fit_the_config_say_what_to_set(monkeypatch):
    slurm_task(monkeypatch, procid=3, localid=3, ntasks=4, nodes=1, nodelist="gpu017")
    environ: dict[str, str] = {}
    assert scheduler.join_ranks("ddp", 4, environ) is True
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("3", "4", "3")
    with pytest.raises(UserError) as err:
        scheduler.join_ranks("ddp", 2, {})
    assert str(err.value) == (
        "device.num_devices=2 but the job has 4 task(s) per node, one per DDP rank; set "
        "hydra.launcher.tasks_per_node=2 (the default) or device.num_devices=4."
    )
    with pytest.raises(
        UserError, match=r"^hydra.launcher.tasks_per_node=4 starts 4 copies of a one-process run; "
    ):
        scheduler.join_ranks("single", 1, {})
    slurm_task(monkeypatch, procid=0, localid=0, ntasks=1, nodes=1, nodelist="gpu017")
    assert scheduler.join_ranks("single", 1, {}) is False
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert scheduler.join_ranks("ddp", 4, {}) is False  # torchrun or our own launcher start the ranks there


def test_the_loop_stops_on_the_preemption_warning_under_submitit_and_leaves_sigterm_to_it(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert scheduler.stop_signals() == (signal.SIGTERM, signal.SIGINT)
    assert not scheduler.is_preemption(signal.SIGUSR2)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert scheduler.stop_signals() == (signal.SIGINT, signal.SIGUSR2)
    assert scheduler.is_preemption(signal.SIGUSR2) and not scheduler.is_preemption(signal.SIGINT)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # submitit's own knob: sbatch --signal=USR1@...
    assert scheduler.stop_signals() == (signal.SIGINT, signal.SIGUSR1)


def test_a_requeue_resubmits_the_same_job_with_resume_auto_and_so_runs_a_job_slurm_restarted(monkeypatch):
    launcher = LocalLauncher(submitit_folder="unused", timeout_min=1)
    args = ("hydra.sweep.dir", 3, "job_id_for_3", {})
    requeued = launcher.checkpoint(["learning_rate=0.1", "resume=/old/last.pt"], *args)
    assert requeued.function is launcher
    assert requeued.args == (["learning_rate=0.1", "resume=auto"], *args)
    # SLURM's own requeue (a node failure) runs the first submission again, SLURM_RESTART_COUNT set.
    upstream = LocalLauncher.__bases__[1]  # hydra-submitit-launcher's, as our module imported it
    monkeypatch.setattr(upstream, "__call__", lambda self, overrides, *a: overrides)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert launcher(["learning_rate=0.1"], *args) == ["learning_rate=0.1"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert launcher(["learning_rate=0.1"], *args) == ["learning_rate=0.1", "resume=auto"]
    assert launcher(["resume=/my/best.pt"], *args) == ["resume=/my/best.pt"]  # the user's own is kept
    with pytest.raises(SystemExit, match=r"pip install 'seo-cli\[slurm\]'"):
        MissingSubmitit()


def test_a_submitit_launcher_without_multirun_says_to_add_m(tmp_path):
    done = run_command("train", "hydra/launcher=submitit_slurm", *RUN, f"hydra.run.dir={tmp_path}")
    assert done.code == 1
    assert (
        "hydra/launcher=submitit_slurm submits the jobs of a multirun, so this single run would train on this "
        "machine; add -m: seo-train -m hydra/launcher=submitit_slurm ..."
    ) in done.output
    assert "Traceback" not in done.output and not (tmp_path / "checkpoints").exists()


def test_the_launcher_configs_size_the_job_from_the_device_config():
    """GPUs per node follow the device config (none for device.type=cpu), tasks per node the DDP ranks."""
    register_configs()
    cases = [
        ("submitit_slurm", (), 1, 1),
        ("submitit_slurm", ("device=cpu",), 0, 1),
        ("submitit_slurm", ("device=ddp",), 2, 2),
        ("submitit_slurm", ("device=ddp", "device.type=cpu", "device.num_devices=4"), 0, 4),
        ("submitit_local", ("device=ddp", "device.type=cpu"), 0, 2),
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for launcher, overrides, gpus, tasks in cases:
            cfg = compose(
                "train", overrides=[f"hydra/launcher={launcher}", *overrides], return_hydra_config=True
            )
            node = cfg.hydra.launcher
            assert (node.gpus_per_node, node.tasks_per_node) == (gpus, tasks), (launcher, overrides)
            assert (
                node._target_
                == f"hydra_plugins.seo_submitit_launcher.submitit_launcher.{launcher[9:].title()}Launcher"
            )
        # The plugin's schema types every key: a misspelt one is refused when the config is composed.
        for launcher in ("submitit_slurm", "submitit_local"):
            with pytest.raises(Exception, match=r"Could not override 'hydra.launcher.timout_min'") as err:
                compose("train", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.timout_min=5"])
            assert re.search(r"Key 'timout_min' not in '(Slurm|Local)QueueConf'", str(err.value.__cause__))


def test_a_job_submitit_will_not_requeue_ends_interrupted_with_its_checkpoint_and_the_resume_command(
    tmp_path, monkeypatch
):
    """The job's last timeout (max_num_timeout spent): submitit's handler raises instead of requeueing. Here
    the job is this process, under a local executor's variables, with that handler in place."""
    from submitit.core.utils import UncompletedJobError

    def submitit_refuses(signum, frame):
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    for name, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "77",
        "SUBMITIT_LOCAL_NTASKS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    previous = signal.signal(signal.SIGUSR2, submitit_refuses)
    try:
        with injected(signal_at_step=13, signal_name="SIGUSR2"):
            stopped = run_command("train", *RUN, f"hydra.run.dir={tmp_path}")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.code == 128 + signal.SIGUSR2, stopped.output[-3000:]
    assert (
        "submitit did not requeue the job: Job not requeued because: timed-out too many times."
        in stopped.output
    )
    assert (
        f"stopped by SIGUSR2 at step 14; {tmp_path / 'checkpoints' / 'last.pt'} is saved." in stopped.output
    )
    assert f"hydra.run.dir={tmp_path} resume=auto" in stopped.output and "Traceback" not in stopped.output
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["global_step"] == 14


def test_the_slurm_launcher_asks_sbatch_for_what_the_device_config_needs(tmp_path, monkeypatch):
    """The sbatch script submitit would submit for `seo-train -m hydra/launcher=submitit_slurm device=ddp
    hydra.launcher.partition=gpu`: our defaults, through the plugin's translation, as SLURM flags."""
    import submitit
    from hydra.utils import instantiate

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=submitit_slurm", "device=ddp", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    cfg.hydra.sweep.dir = str(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; nothing runs it
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    submitted = []
    monkeypatch.setattr(
        submitit.AutoExecutor, "map_array", lambda executor, *args: submitted.append(executor) or []
    )
    launcher.launch([["learning_rate=0.1"]], initial_job_idx=0)
    [executor] = submitted
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for flag in (
        "--partition=gpu",
        "--time=240",  # timeout_min
        "--signal=USR2@120",  # signal_delay_s: the warning the loop answers with last.pt
        "--nodes=1",
        "--ntasks-per-node=2",  # one task per DDP rank
        "--gpus-per-node=2",
        "--cpus-per-task=4",
        "--mem=32GB",
        "--job-name=train",
    ):
        assert f"#SBATCH {flag}\n" in sbatch, flag
    assert executor._executor.max_num_timeout == 20

"""DDP on the CPU (gloo, 2 processes) through the real CLI: exact metrics, the same weights as one process
with double the batch, exact resume with each rank's RNG, N -> M resume, a killed worker, a sweep, and
three seo_cli frames from a worker to ``optimizer.step()``.

seo-train's console script runs in this process as the launching process (tests/helpers/commands.py):
its workers are real processes, started by the elastic launcher as a user's are, and write into the
captured output. The killed-worker test starts the whole job as a process, to find its workers below it.
Each launch costs the workers' imports (about 5 s on the 2-core machine), so the runs are shared.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from helpers.commands import run_captured, run_command
from test_evaluate import compose_eval, quoted

import seo_cli
from seo_cli.evaluate import run_eval

pytestmark = pytest.mark.slow

PACKAGE = Path(seo_cli.__file__).resolve().parent
REPO = PACKAGE.parent
# 420 training rows: 210 per rank, 14 batches of 16 (the last of 2). A constant learning rate, so that a
# run resumed from its epoch-2 checkpoint is the 3-epoch run. Every epoch's checkpoint kept (save_top_k=-1):
# the resume test starts from epoch 2's.
DDP = ["debug=smoke", "device=ddp", "device.type=cpu", "logger=none", "scheduler=none"]
THREE_EPOCHS = [*DDP, "epochs=3", "trainer.checkpoint.save_top_k=-1"]


def seo_train(*overrides: str, env: dict[str, str] | None = None):
    """seo-train in this process, its workers below it; ``env`` adds to theirs."""
    saved = dict(os.environ)
    os.environ.update(
        {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    )
    try:
        done = run_command("train", *overrides)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert "Traceback" not in done.output, done.output[-5000:]
    return done


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    [path] = (run_dir / "checkpoints").glob(f"epoch={epoch:03d}-*.pt")
    return path


# Imported by each worker at start-up (PYTHONPATH): records the seo_cli frames above every optimizer step.
SITECUSTOMIZE = """
import json, os, traceback
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

PACKAGE = Path(os.environ["SEO_CLI_PACKAGE"])


def record(optimizer, args, kwargs):
    frames = [
        f.name for f in traceback.extract_stack()
        if PACKAGE in Path(f.filename).resolve().parents and f.name != "<module>"
    ]
    with open(os.environ["FRAMES_FILE"] + "." + os.environ.get("RANK", "x"), "a") as out:
        out.write(json.dumps(frames) + "\\n")


register_optimizer_step_pre_hook(record)
"""


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory) -> Path:
    """A 2-process run of 3 epochs, rank 0's files in its run directory; its workers record their frames."""
    root = tmp_path_factory.mktemp("ddp")
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {
        "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SEO_CLI_PACKAGE": str(PACKAGE),
        "FRAMES_FILE": str(root / "frames"),
    }
    run_dir = root / "three_epochs"
    done = seo_train(*THREE_EPOCHS, "device.num_devices=2", f"hydra.run.dir={run_dir}", env=env)
    assert done.code == 0, done.output[-5000:]
    return run_dir


def test_three_seo_cli_frames_in_each_ddp_worker(three_epochs):
    """The DDP half of tests/test_structure.py's frame count: worker -> train -> fit, in every rank."""
    for rank in (0, 1):
        lines = (three_epochs.parent / f"frames.{rank}").read_text().splitlines()
        assert len(lines) == 42, rank  # one per optimizer step: 3 epochs of 14
        assert {tuple(json.loads(line)) for line in lines} == {("worker", "train", "fit")}, rank


def test_validation_metrics_equal_one_process_evaluating_the_same_weights(three_epochs, tmp_path):
    state = torch.load(three_epochs / "checkpoints" / "best.pt", weights_only=True)
    [logged] = [row for row in state["history"] if row["epoch"] == state["best"]["epoch"]]
    result = run_eval(
        compose_eval(
            f"checkpoint={quoted(three_epochs / 'checkpoints' / 'best.pt')}",
            "split=val",
            "bootstrap=0",
            "report=false",
        ),
        tmp_path,
    )
    assert result["rows"] == 90  # 45 per rank, no padding copies counted
    logged_val = {k: v for k, v in logged.items() if k.startswith("val/")}
    assert set(result["metrics"]) == set(logged_val)
    assert result["metrics"] == pytest.approx(logged_val, rel=1e-5, abs=1e-7, nan_ok=True)


def test_rank_zero_alone_writes_and_the_global_batch_is_logged(three_epochs):
    log = (three_epochs / "train.log").read_text()
    assert "DDP: 2 processes (gloo) x batch_size 16 = a global batch of 32 rows per optimizer step" in log
    rows = read_jsonl(three_epochs / "metrics.jsonl")
    assert [r["step"] for r in rows if "epoch" in r] == [14, 28, 42]  # one row per epoch: rank 0 alone writes
    names = sorted(p.name for p in (three_epochs / "checkpoints").iterdir())
    assert names == sorted(
        ["best.pt", "last.pt", *(epoch_checkpoint(three_epochs, e).name for e in (1, 2, 3))]
    )
    state = torch.load(three_epochs / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    # Each rank draws its own dropout masks: the two torch generators differ.
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


def test_resume_under_ddp_restores_each_rank_and_equals_the_straight_run(three_epochs, tmp_path):
    """The 3-epoch run, stopped after epoch 2: its directory with epoch 2's checkpoint as the newest last.pt,
    as a kill after that save leaves it (metrics.jsonl rows past it are dropped on resume)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(three_epochs, resumed)
    shutil.copyfile(epoch_checkpoint(three_epochs, 2), resumed / "checkpoints" / "last.pt")
    done = seo_train(*THREE_EPOCHS, "device.num_devices=2", f"hydra.run.dir={resumed}", "resume=auto")
    assert done.code == 0, done.output[-5000:]
    assert "Resumed at epoch 2, step 28" in done.output
    assert "re-seeded" not in done.output
    expected, got = weights(three_epochs), weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    history = lambda d: [r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "epoch" in r]  # noqa: E731
    assert history(resumed) == pytest.approx(history(three_epochs), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_process_checkpoint_resumes_on_one_process(three_epochs, tmp_path):
    """On one process: this one, as the single rank torchrun --nproc-per-node 1 would start (RANK and
    WORLD_SIZE set, a gloo group of one), so no worker has to import torch first."""
    resumed = tmp_path / "resumed"
    shutil.copytree(three_epochs, resumed)
    rank = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    threads = torch.get_num_threads()  # joining the group sets this process's thread count
    try:
        done = seo_train(
            *THREE_EPOCHS,
            "device.num_devices=1",
            "epochs=4",
            f"hydra.run.dir={resumed}",
            "resume=auto",
            env={**rank, "MASTER_PORT": str(_free_port())},
        )
    finally:
        torch.set_num_threads(threads)
    assert not torch.distributed.is_initialized()
    assert done.code == 0, done.output[-5000:]
    assert (
        "written by 2 process(es) and this run has 1: the ranks' random number generators are re-seeded"
        in done.output
    )
    assert [r["epoch"] for r in read_jsonl(resumed / "metrics.jsonl") if "epoch" in r] == [1.0, 2.0, 3.0, 4.0]


def test_a_multirun_of_ddp_jobs_runs_each_job_in_its_own_process_group_and_one_equals_double_the_batch(
    tmp_path,
):
    """Job 0 also meets the single process with double the batch (this process, device=cpu): the same data
    order (DistributedSampler deals rows r, r+2, ... of the permutation one process draws, both from
    torch.randperm seeded with seed + epoch), no dropout, so the mean of the two ranks' gradients is the
    gradient of the 32-row batch.

    SGD, not AdamW: summed in another order the gradients differ by rounding (about 1e-7), and for an
    element whose gradient is a cancellation near zero AdamW steps by +-lr whichever side of zero the
    rounding falls, so through AdamW the two runs differ by up to 2e-3 in a few percent of the embedding
    and convolution weights on this machine: that measures rounding, not DDP."""
    common = ["model.dropout=0", "epochs=1", "optimizer=sgd"]
    sweep = tmp_path / "sweep"
    done = seo_train("-m", *DDP, *common, "device.num_devices=2", "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert done.code == 0, done.output[-5000:]
    assert done.output.count("Starting 2 DDP workers") == 2  # the sweep was not relaunched by any rank
    for job in ("0", "1"):
        summary = (sweep / job / "summary.json").read_text()
        assert '"status": "ok"' in summary
    assert len((sweep / "summary.csv").read_text().splitlines()) == 3  # header + 2 jobs

    one = tmp_path / "one"
    single = run_command(
        "train", "debug=smoke", "device=cpu", "logger=none", "scheduler=none", *common, "batch_size=32", "seed=1",
        f"hydra.run.dir={one}",
    )  # fmt: skip
    assert single.code == 0, single.output[-3000:]
    a, b = weights(sweep / "0"), weights(one)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # Logged losses agree too: the step losses are averaged over the ranks.
    loss = lambda d: [r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "train/lr" in r]  # noqa: E731
    assert loss(sweep / "0") == pytest.approx(loss(one), rel=1e-4)


def test_torchrun_started_ranks_train_as_the_launcher_started_ones(three_epochs, tmp_path):
    """The several-machines path: torchrun (its launcher in this process) starts seo_cli.train in every
    rank with the run dir given."""
    from torch.distributed.run import main as torchrun

    run_dir = tmp_path / "torchrun"
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    try:
        argv = ["--standalone", "--nproc-per-node", "2", "-m", "seo_cli.train", *THREE_EPOCHS]
        done = run_captured(lambda: torchrun([*argv, f"hydra.run.dir={run_dir}"]))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert done.code == 0, done.output[-5000:]
    assert "Traceback" not in done.output
    assert done.output.count("done: best epoch") == 1  # rank 0 alone reports
    expected, got = weights(three_epochs), weights(run_dir)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def _worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the DDP workers below ``parent``, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"seo_cli.launch" in cmdline and b"TORCHELASTIC_RUN_ID" in b"".join(environ):
            env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
            if str(parent).encode() in _ancestors(int(entry.name)):
                found[int(env[b"RANK"])] = int(entry.name)
    return found


def _ancestors(pid: int) -> bytes:
    chain = []
    while pid > 1:
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(str(pid))
    return " ".join(chain).encode()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_killing_a_worker_ends_the_job_with_a_message_naming_its_rank(tmp_path):
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seo_cli.train",
            *DDP,
            "device.num_devices=2",
            "epochs=200",
            "device.timeout_s=30",
            f"hydra.run.dir={run_dir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():  # training is under way on both ranks
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = _worker_pids(job.pid)
        assert set(workers) == {0, 1}
        os.kill(workers[1], signal.SIGKILL)
        killed = time.monotonic()
        output, _ = job.communicate(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        job.kill()
    assert job.returncode == 1
    assert elapsed < 30  # within device.timeout_s: nobody waits for the dead rank
    assert (
        f"DDP worker rank 1 (pid {workers[1]}) was killed by SIGKILL, so the job was stopped; resume from"
        in output
    )
    assert "Traceback" not in output, output
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers.values())
    torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)  # the last good checkpoint is intact

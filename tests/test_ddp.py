"""DDP on the CPU (gloo, 2 processes) through the real CLI: exact metrics, the same weights as one process
with double the batch, exact resume with each rank's RNG, N -> M resume, a killed worker, and a sweep."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from test_evaluate import compose_eval, quoted

from seo_cli.evaluate import run_eval

pytestmark = pytest.mark.slow

# 420 training rows: 210 per rank, 14 batches of 16 (the last of 2). A constant learning rate, so that
# 2 epochs resumed to 3 are the 3-epoch run (a schedule rebuilt for a new length would differ).
DDP = ["debug=smoke", "device=ddp", "device.type=cpu", "logger=none", "scheduler=none"]


def seo_train(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "seo_cli.train", *overrides], capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """A 2-process run of 2 epochs, rank 0's files in its run directory."""
    run_dir = tmp_path_factory.mktemp("ddp") / "two_epochs"
    done = seo_train(*DDP, "device.num_devices=2", "epochs=2", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


def test_validation_metrics_equal_one_process_evaluating_the_same_weights(two_epochs, tmp_path):
    state = torch.load(two_epochs / "checkpoints" / "best.pt", weights_only=True)
    [logged] = [row for row in state["history"] if row["epoch"] == state["best"]["epoch"]]
    result = run_eval(
        compose_eval(
            f"checkpoint={quoted(two_epochs / 'checkpoints' / 'best.pt')}",
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


def test_rank_zero_alone_writes_and_the_global_batch_is_logged(two_epochs):
    log = (two_epochs / "train.log").read_text()
    assert "DDP: 2 processes (gloo) x batch_size 16 = a global batch of 32 rows per optimizer step" in log
    rows = read_jsonl(two_epochs / "metrics.jsonl")
    assert [r["step"] for r in rows if "epoch" in r] == [14, 28]  # one row per epoch: rank 0 alone writes
    assert sorted(p.name for p in (two_epochs / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = torch.load(two_epochs / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    # Each rank draws its own dropout masks: the two torch generators differ.
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


def test_resume_under_ddp_restores_each_rank_and_equals_the_straight_run(two_epochs, tmp_path):
    straight = tmp_path / "straight"
    assert seo_train(*DDP, "device.num_devices=2", "epochs=3", f"hydra.run.dir={straight}").returncode == 0
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(two_epochs, resumed)
    done = seo_train(*DDP, "device.num_devices=2", "epochs=3", f"hydra.run.dir={resumed}", "resume=auto")
    assert done.returncode == 0, done.stdout
    assert "re-seeded" not in done.stdout
    expected, got = weights(straight), weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    history = lambda d: [r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "epoch" in r]  # noqa: E731
    assert history(resumed) == pytest.approx(history(straight), rel=1e-6)


def test_a_two_process_checkpoint_resumes_on_one_process(two_epochs, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(two_epochs, resumed)
    done = seo_train(*DDP, "device.num_devices=1", "epochs=3", f"hydra.run.dir={resumed}", "resume=auto")
    assert done.returncode == 0, done.stdout
    assert (
        "written by 2 process(es) and this run has 1: the ranks' random number generators are re-seeded"
        in (done.stdout)
    )
    assert [r["epoch"] for r in read_jsonl(resumed / "metrics.jsonl") if "epoch" in r] == [1.0, 2.0, 3.0]


def test_two_processes_reach_the_weights_of_one_process_with_double_the_batch(tmp_path):
    """The same data order (DistributedSampler deals rows r, r+2, ... of one permutation), no dropout:
    the mean of the two ranks' gradients is the gradient of the 32-row batch.

    SGD, not AdamW: summed in another order the gradients differ by rounding (about 1e-7), and for an
    element whose gradient is a cancellation near zero AdamW steps by +-lr whichever side of zero the
    rounding falls, so through AdamW the two runs differ by up to 2e-3 in a few percent of the embedding
    and convolution weights on this machine: that measures rounding, not DDP."""
    common = [*DDP, "model.dropout=0", "epochs=1", "optimizer=sgd"]
    two, one = tmp_path / "two", tmp_path / "one"
    assert seo_train(*common, "device.num_devices=2", "batch_size=16", f"hydra.run.dir={two}").returncode == 0
    assert seo_train(*common, "device.num_devices=1", "batch_size=32", f"hydra.run.dir={one}").returncode == 0
    a, b = weights(two), weights(one)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # Logged losses agree too: the step losses are averaged over the ranks.
    loss = lambda d: [r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "train/lr" in r]  # noqa: E731
    assert loss(two) == pytest.approx(loss(one), rel=1e-4)


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


def test_a_multirun_of_ddp_jobs_runs_each_job_in_its_own_process_group(tmp_path):
    done = seo_train("-m", *DDP, "device.num_devices=2", "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Starting 2 DDP workers") == 2  # the sweep was not relaunched by any rank
    for job in ("0", "1"):
        summary = (tmp_path / job / "summary.json").read_text()
        assert '"status": "ok"' in summary
    assert len((tmp_path / "summary.csv").read_text().splitlines()) == 3  # header + 2 jobs


def test_torchrun_started_ranks_train_as_the_launcher_started_ones(two_epochs, tmp_path):
    """The several-machines path: torchrun starts seo_cli.train in every rank with the run dir given."""
    run_dir = tmp_path / "torchrun"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "seo_cli.train",
            *DDP,
            "epochs=2",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (done.stdout + done.stderr).count("done: best epoch") == 1  # rank 0 alone reports
    expected, got = weights(two_epochs), weights(run_dir)
    assert all(torch.equal(expected[k], got[k]) for k in expected)

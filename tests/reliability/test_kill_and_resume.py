"""1. SIGKILL at seeded random steps, one of them half-way through a checkpoint write, each followed by
``resume=auto``: the run ends with the weights, history and metrics.jsonl of the run never interrupted,
and no checkpoint is ever left truncated under its final name.

Two chains of processes, one per core: in each, every run resumes the previous one and is killed again
further on, and the last one, in this process, finishes; a resume that restored anything wrongly would
show in the final weights. The faults come from tests/helpers/fault_inject.py, which wraps seo_cli's
functions from outside; each killed run is a forked child of this process, which has torch and seo_cli
imported already (a new interpreter spends seconds on that). The uninterrupted run trains in this process
while the first killed ones run beside it (all on one thread, as every run of this suite: the same
arithmetic, bit for bit).
"""

import json
import random
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from helpers.fault_inject import start_in_child, wait_for_child

from seo_cli.checkpoint import latest_checkpoint, load_checkpoint
from seo_cli.errors import UserError
from seo_cli.train import train

from .support import compose_train, count, tiny_overrides, write_tiny_table

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SEED = 20261126
# 200 rows -> 140 training rows, 9 optimizer steps of 16 per epoch; 4 epochs are 36 steps. last.pt every
# 4 steps too, so a kill inside an epoch resumes from inside it. The default model has dropout, so a
# resume that restored the RNG wrongly changes the weights.
STEPS_PER_EPOCH, EPOCHS = 9, 4
TOTAL = STEPS_PER_EPOCH * EPOCHS
EVERY_N_STEPS = 4
RUN = [
    "debug=smoke",
    "data.num_rows=200",
    f"epochs={EPOCHS}",
    "logger=none",
    "trainer.progress=plain",
    "device=cpu",
    f"trainer.checkpoint.every_n_steps={EVERY_N_STEPS}",
]
# Each chain's n-th kill lands in the n-th third of the run's steps.
THIRDS = [(1, 11), (12, 23), (24, TOTAL - 1)]
# Steps after which a checkpoint is complete on disk: every 4th step and every epoch's end.
SAVE_STEPS = sorted(
    set(range(EVERY_N_STEPS, TOTAL + 1, EVERY_N_STEPS))
    | set(range(STEPS_PER_EPOCH, TOTAL + 1, STEPS_PER_EPOCH))
)


FAULTS = {"--kill-at-step": "kill_at_step", "--kill-in-save": "kill_in_save"}  # fault_inject's options


def seo_train(run_dir: Path, fault: tuple[str, str], resume: bool, log: Path) -> BaseProcess:
    argv = [*RUN, f"hydra.run.dir={run_dir}", *(["resume=auto"] if resume else [])]
    return start_in_child(*argv, log=log, **{FAULTS[fault[0]]: int(fault[1])})


def finish(process: BaseProcess, log: Path) -> tuple[int, str]:
    code = wait_for_child(process, log)
    return code, log.read_text()


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(("speed/", "memory/"))} for row in rows]


def check_no_truncated_checkpoint(checkpoints: Path) -> dict[str, int]:
    """Every file under a final ``*.pt`` name loads; returns their global steps. Only a temp file may
    hold a cut-short write."""
    steps = {}
    for path in sorted(checkpoints.glob("*.pt")) if checkpoints.is_dir() else []:
        steps[path.name] = load_checkpoint(path)["global_step"]  # raises UserError if truncated
    return steps


class KillChain:
    """One run directory, killed again and again: each process resumes where the last one's newest
    complete checkpoint left it, and is killed at a seeded random point further on."""

    def __init__(self, run_dir: Path, rng: random.Random, kill_in_save_at: int | None) -> None:
        self.run_dir, self.rng, self.kill_in_save_at = run_dir, rng, kill_in_save_at
        self.checkpoints = run_dir / "checkpoints"
        self.resume_step, self.kills, self.newest = 0, [], None
        self.fault: tuple[str, str] = ("", "")
        self.log = run_dir.parent / "process0.log"
        run_dir.parent.mkdir(parents=True)

    def start_next(self) -> BaseProcess:
        """SIGKILL after a random step in the next third of the run (past the resume point), or, once,
        half-way through this process's first or second checkpoint write."""
        if len(self.kills) == self.kill_in_save_at:
            self.fault = ("--kill-in-save", str(self.rng.randint(1, 2)))
        else:
            low, high = THIRDS[len(self.kills)]
            target = self.rng.randint(max(low, self.resume_step + 1), high)
            self.fault = ("--kill-at-step", str(target - self.resume_step))
        self.log = self.run_dir.parent / f"process{len(self.kills)}.log"
        return seo_train(self.run_dir, self.fault, resume=bool(self.kills), log=self.log)

    def check_killed(self, code: int, output: str) -> None:
        assert code == -9, f"{self.fault} did not kill the run (exit {code}):\n{output[-3000:]}"
        if self.resume_step:
            assert (
                f"Resumed at epoch {self.resume_step // STEPS_PER_EPOCH}, step {self.resume_step}" in output
            )
        steps = check_no_truncated_checkpoint(self.checkpoints)
        self.newest = latest_checkpoint(self.checkpoints)
        new_step = steps[self.newest.name] if self.newest is not None else 0
        if self.fault[0] == "--kill-at-step":
            killed_after = self.resume_step + int(self.fault[1])
            # The newest complete checkpoint is the last one due at or before the kill.
            assert new_step == max([s for s in SAVE_STEPS if s <= killed_after], default=0)
            self.kills.append(f"after step {killed_after}")
        else:
            # The write that was cut short is a temp file that does not load; the files under final
            # names are the earlier, complete ones.
            partial = list(self.checkpoints.glob(".*.pt.*.tmp"))
            assert partial, "the kill in a checkpoint write left no temp file: the write was not cut short"
            for path in partial:
                with pytest.raises(UserError, match="is not a PyTorch checkpoint file"):
                    load_checkpoint(path)
            assert new_step >= self.resume_step
            self.kills.append(f"in checkpoint write {self.fault[1]} after step {self.resume_step}")
        self.resume_step = new_step


def assert_same_run(run_dir: Path, straight_dir: Path, kills: list[str]) -> None:
    expected = load_checkpoint(straight_dir / "checkpoints" / "last.pt")
    got = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert got["global_step"] == expected["global_step"] == TOTAL
    assert expected["model"].keys() == got["model"].keys()
    for name, weight in expected["model"].items():
        assert torch.equal(weight, got["model"][name]), f"{name} differs after kills {kills}"
    for i, state in expected["optimizer"]["state"].items():  # AdamW's moments, too
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], got["optimizer"]["state"][i][key]), (key, i, kills)
    assert without_timing(got["history"]) == without_timing(expected["history"])
    # Rows the killed runs logged past their checkpoints were dropped and logged again, once.
    assert without_timing(read_jsonl(run_dir / "metrics.jsonl")) == without_timing(
        read_jsonl(straight_dir / "metrics.jsonl")
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["global_step"] == TOTAL
    assert summary["metrics"] == json.loads((straight_dir / "summary.json").read_text())["metrics"]


def test_sigkill_anywhere_then_resume_auto_ends_with_the_straight_runs_weights(tmp_path, cases_tried):
    # Two chains of three kills side by side, one per core; one of the six kills lands in a write.
    chains = [
        KillChain(tmp_path / "a" / "run", random.Random(SEED), kill_in_save_at=1),
        KillChain(tmp_path / "b" / "run", random.Random(SEED + 1), kill_in_save_at=None),
    ]
    straight_dir = tmp_path / "straight" / "run"
    for round_ in range(3):
        processes = [chain.start_next() for chain in chains]
        if round_ == 0:
            train(compose_train(*RUN), straight_dir)
        for chain, process in zip(chains, processes, strict=True):
            chain.check_killed(*finish(process, chain.log))

    kills = [k for chain in chains for k in chain.kills]
    for k in kills:
        count(cases_tried, "SIGKILL, then resume=auto", k)
    assert len(kills) == 6 and sum(k.startswith("in checkpoint write") for k in kills) == 1, kills
    for chain in chains:
        summary = train(compose_train(*RUN, "resume=auto"), chain.run_dir)
        assert summary["resumed_from"] == str(chain.newest)
        assert_same_run(chain.run_dir, straight_dir, chain.kills)


def test_resume_auto_skips_a_temp_file_left_by_a_killed_write(tmp_path):
    """A temp file of a cut-short write sits next to the checkpoints; resume=auto never picks it, even
    when it is the newest file, and a real checkpoint truncated in place is refused by name."""
    table = write_tiny_table(tmp_path / "pages.csv")
    cfg = compose_train(*tiny_overrides(table), "epochs=2")
    train(cfg, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    last = (checkpoints / "last.pt").read_bytes()
    (checkpoints / ".last.pt.abc123.tmp").write_bytes(last[: len(last) // 2])  # newest file in the folder
    assert latest_checkpoint(checkpoints) == checkpoints / "last.pt"

    (checkpoints / "last.pt").write_bytes(last[: len(last) // 3])  # what a non-atomic writer would leave
    resumed = compose_train(*tiny_overrides(table), "epochs=3", "resume=auto")
    with pytest.raises(UserError) as err:
        train(resumed, tmp_path / "run")
    assert str(checkpoints / "last.pt") in str(err.value)
    assert "truncated" in str(err.value)

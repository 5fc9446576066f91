"""Helpers of the reliability suite: the real command line, a tiny table file, and what a clean error is."""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from conftest import CONF_DIR, TALLY  # noqa: F401 - TALLY: the key tests count cases under
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seo_cli.config import register_configs

REPO = Path(__file__).resolve().parents[2]

# Every in-process run: CPU, no TensorBoard, log lines instead of bars.
QUIET = ["debug=smoke", "logger=none", "trainer.progress=plain", "device=cpu"]


def cli_env() -> dict[str, str]:
    """The environment of a command-line run: this checkout importable from any working directory (the
    editable install may point at another copy), and one intra-op thread, as the in-process runs have:
    runs compared bit for bit across processes have differed in the last bits with two threads."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "0",
    }


def command(entry_point: str, *args: str) -> list[str]:
    """The console script of ``entry_point`` (train, evaluate, predict: the functions of seo_cli.cli that
    pyproject.toml names seo-train, seo-eval, seo-predict), run by this interpreter with ``args``."""
    return [sys.executable, "-c", f"from seo_cli.cli import {entry_point}; {entry_point}()", *args]


def run_cli(entry_point: str, *args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``seo-train ...``, ``seo-eval ...`` or ``seo-predict ...``, as a user runs it."""
    return subprocess.run(
        command(entry_point, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def compose_config(name: str, *overrides: str) -> DictConfig:
    """The config of ``seo-train`` (train), ``seo-eval`` (eval) or ``seo-predict`` (predict), as the
    entrypoint would compose it from ``overrides``."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def compose_train(*overrides: str) -> DictConfig:
    return compose_config("train", *overrides)


def write_tiny_table(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """A CSV that trains in a fraction of a second: numeric a, b; text t; category c; label (two classes,
    told by a) and y (regression)."""
    rng = np.random.default_rng(seed)
    lines = ["a,b,t,c,label,y"]
    for i in range(rows):
        a = rng.normal()
        label = "hi" if a > 0 else "lo"
        lines.append(f"{a:.4f},{rng.normal():.4f},word{i % 7} {label},{'pqr'[i % 3]},{label},{2 * a + 1:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_overrides(path: Path, model: str = "mlp") -> list[str]:
    """Train an 8-unit MLP on ``write_tiny_table``'s file: the cheapest run that exercises the whole path.
    Another ``model`` reads the text column too, at its config's sizes."""
    overrides = [
        *QUIET,
        "data=csv",
        f"data.path={path}",
        "data.numeric_columns=[a,b]",
        "data.categorical_columns=[c]",
        "data.targets=[{name:label,type:classification},{name:y,type:regression}]",
        f"model={model}",
        "scheduler=none",
    ]
    return overrides + (
        ["model.hidden_sizes=[8]"] if model == "mlp" else ["data.text_columns=[t]", "data.max_length=16"]
    )


SENTENCE = re.compile(r"^\S.*[.?]$")


def assert_clean_error(message: str, *, lines: int | None = 1) -> None:
    """A message a user can act on: one sentence per problem (``lines`` of them), no traceback, no
    Python object reprs of internal types."""
    assert message.strip(), "an empty error message"
    assert "Traceback" not in message and 'File "' not in message, message
    got = message.splitlines()
    if lines is not None:
        assert len(got) == lines, f"expected {lines} line(s), got {len(got)}: {message!r}"
    for line in got:
        assert SENTENCE.match(line), f"not one sentence: {line!r}"


class Hang(Exception):
    """A case ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``Hang`` inside the block after ``seconds``: 'never a hang' needs a clock (main thread only)."""

    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def count(tally: dict, name: str, outcome: str) -> None:
    outcomes = tally.setdefault(name, {})
    outcomes[outcome] = outcomes.get(outcome, 0) + 1

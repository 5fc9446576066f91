"""Shared fixtures: the repository's config tree composed with Hydra's compose API."""

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seo_cli.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# {property: {outcome: count}}: the cases the reliability suite tried (tests/reliability/conftest.py's
# cases_tried), printed under "reliability: cases tried" at the end of the run.
TALLY = pytest.StashKey[dict]()


# The files that take longest (seconds on the 2-core machine, beside the other worker), longest first:
# pytest-xdist hands whole files to its two processes in collection order (--no-loadscope-reorder in
# pyproject.toml), so these start early and neither process is left waiting on the other's last long file.
LONGEST_FIRST = (
    "test_ddp.py",  # 80
    "test_export.py",  # 45
    "test_submitit.py",  # 40: job processes of submitit's local executor
    "test_tuning_postgres.py",  # 40: three seo-train processes, each starting cold
    "test_train_options.py",  # 40
    "models/test_model_pretrained.py",  # 30
    "reliability/test_fuzzed_configs.py",  # 35
    "e2e/test_cli.py",  # 30
    "test_tuning_parallel.py",  # 30
    "data/test_parquet_dir.py",  # 23
    "test_resume.py",  # 25
    "reliability/test_load.py",  # 25
    "reliability/test_hostile_files.py",  # 23
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.resolve().relative_to(tests).as_posix(), len(rank)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: hand this worker's counts to the controlling process."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability_cases"] = session.config.stash.get(TALLY, {})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """In the controlling process: add up what each pytest-xdist worker counted."""
    tally = node.config.stash.setdefault(TALLY, {})
    for name, outcomes in getattr(node, "workeroutput", {}).get("reliability_cases", {}).items():
        for outcome, count in outcomes.items():
            tally.setdefault(name, {})
            tally[name][outcome] = tally[name].get(outcome, 0) + count


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    tally = config.stash.get(TALLY, {})
    if not tally:
        return
    terminalreporter.section("reliability: cases tried")
    for name, outcomes in sorted(tally.items()):
        detail = ", ".join(f"{outcome} {count}" for outcome, count in sorted(outcomes.items()))
        terminalreporter.write_line(f"{name}: {sum(outcomes.values())} cases ({detail})")


# The sizes of the thread pools of a test process's libraries, read when a pool starts (in this process
# too, for the tokenizers' pool, which starts at the first text it encodes).
THREADS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One thread per thread pool for the whole session (torch's, numpy's and scipy's BLAS, the OpenMP of
    torch and scikit-learn, the tokenizers'), and in the processes the tests start; all put back at its end.

    Speed: the suite's models have a few thousand weights, and two pytest-xdist processes share the
    2-core machine with the DDP workers and commands the tests start. A pool of two threads there only
    adds contention, and a pool whose threads spin while they wait for a core can stall a test for many
    seconds (generating 20,000 rows took 30 s instead of 0.5, a tokenizer round trip 20 s).
    Exactness: two runs compared bit for bit (resumed against straight, streamed against resident, DDP
    ranks of one thread each against one process) have differed in the last bits with two threads
    (text.embedding.weight, from a validation pass on), intermittently; with one they agree every time."""
    from threadpoolctl import threadpool_limits

    environ = {name: os.environ.get(name) for name in THREADS}
    os.environ.update(THREADS)
    threads = torch.get_num_threads()
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def compose_train():
    """``compose_train(*overrides)`` -> the seo-train config, as the entrypoint would compose it."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("train", overrides=list(overrides))

    return _compose


@pytest.fixture
def train_run(compose_train, tmp_path):
    """``train_run(*overrides)`` -> (summary, run_dir): one in-process ``seo-train debug=smoke`` run."""
    from seo_cli.train import train

    counter = iter(range(1000))

    def _run(*overrides: str) -> tuple[dict, Path]:
        cfg = compose_train("debug=smoke", "logger=none", "trainer.progress=plain", *overrides)
        run_dir = tmp_path / f"run{next(counter)}"
        return train(cfg, run_dir), run_dir

    return _run


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def smoke_checkpoint(tmp_path_factory, name: str, *overrides: str) -> Path:
    """best.pt of an in-process ``seo-train debug=smoke`` run, trained once per session: the test modules
    that ask for the same ``name`` (with the same overrides) share it."""
    from seo_cli.train import train

    run_dir = tmp_path_factory.getbasetemp() / "smoke_runs" / name
    if not (run_dir / "summary.json").is_file():  # written last: a run that failed is trained again
        register_configs()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(
                "train",
                overrides=["debug=smoke", "logger=none", "trainer.progress=plain", "device=cpu", *overrides],
            )
        train(cfg, run_dir)
    return run_dir / "checkpoints" / "best.pt"

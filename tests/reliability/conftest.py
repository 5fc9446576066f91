"""The ``reliability`` marker and the tally of fuzz cases (one intra-op thread: tests/conftest.py)."""

from pathlib import Path

import pytest

from seo_cli.train import train

from .support import TALLY, compose_train, tiny_overrides, write_tiny_table

MARKER = "reliability: the reliability and security suite (tests/reliability; part of the default run)"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here so the suite runs under --strict-markers before pyproject.toml lists the marker.
    config.addinivalue_line("markers", MARKER)


@pytest.fixture
def cases_tried(request: pytest.FixtureRequest) -> dict:
    """``{property: {outcome: count}}`` for the whole session, printed at the end of the run
    (tests/conftest.py, which also adds up the counts of pytest-xdist's workers)."""
    return request.config.stash.setdefault(TALLY, {})


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of one in-process epoch on the tiny table (checkpoints/best.pt, last.pt)."""
    root = tmp_path_factory.mktemp("tiny_run")
    table = write_tiny_table(root / "pages.csv")
    train(compose_train(*tiny_overrides(table), "epochs=1"), root / "run")
    return root / "run"

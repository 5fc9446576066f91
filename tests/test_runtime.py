"""Device choice and seeding."""

import logging
import random

import numpy as np
import pytest
import torch

from seo_cli.errors import UserError
from seo_cli.runtime import pick_device, seed_everything


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_is_the_cpu_without_accelerators(cpu_only):
    assert pick_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch, cpu_only):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_cpu_is_always_available(cpu_only):
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("kind", ["cuda", "mps"])
def test_missing_device_is_a_user_error(cpu_only, kind):
    with pytest.raises(UserError, match=rf"device.type={kind} is not available.*device.fallback=warn"):
        pick_device(kind)


def test_missing_device_with_fallback_warn_is_the_cpu_and_says_so(cpu_only, caplog):
    with caplog.at_level(logging.WARNING, logger="seo_cli.runtime"):
        assert pick_device("cuda", fallback="warn") == torch.device("cpu")
    assert "device.type=cuda is not available" in caplog.text


def draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(3)


@pytest.mark.parametrize("seed", [0, 42, 2**40 + 5])
def test_seed_everything_makes_python_numpy_and_torch_repeat(seed):
    seed_everything(seed)
    first = draws()
    seed_everything(seed)
    second = draws()
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])


def test_different_seeds_draw_differently():
    seed_everything(1)
    a = draws()
    seed_everything(2)
    b = draws()
    assert a[0] != b[0] and a[1] != b[1] and not torch.equal(a[2], b[2])

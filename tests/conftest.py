"""Shared test helpers: the golden-fixture folder and tiny model configurations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def fixtures_dir() -> Path:
    """../shared/fixtures beside the checkout, or $GD_FIXTURES."""
    env = os.environ.get("GD_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def load_fixture(relative: str) -> dict:
    """Load a golden fixture, skipping the test with a reason when the shared folder is absent."""
    path = fixtures_dir() / relative
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found (../shared/fixtures is absent; set GD_FIXTURES)")
    return torch.load(path, map_location="cpu", weights_only=True)


# Modules that train or run scripts as processes for seconds each: the slow tier.
SLOW_MODULES = ("test_ppap_training", "test_vdpm_train")


def pytest_collection_modifyitems(config, items):
    """Tests of the golden fixtures take the ``fixtures`` mark (those of the PPAP key manifest through their
    ``manifest`` fixture); the modules in SLOW_MODULES take ``slow``."""
    for item in items:
        if "manifest" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fixtures)
        if item.module.__name__.split(".")[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (timing-stable on a shared 2-core machine), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield

"""Shared test fixtures.

Real media comes from ../shared/data beside the checkout (or $SHARED_DATA). Tests that
need it fail, never skip, when it is missing: a skipped test would hide that CI did not
check what it claims to.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_REFERENCE = SHARED_DATA.parent / "reference"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data {path} is missing: ../shared must sit beside the checkout "
                    f"(or set SHARED_DATA); CI={os.environ.get('CI', 'unset')}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real clips, portraits, frames and manifests."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """../shared/reference: checkpoint layout and golden vectors of the original code."""
    return _require(SHARED_REFERENCE)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Two cores: keep torch from oversubscribing them when Ray workers also run."""
    try:
        import torch
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:
        pass
    yield

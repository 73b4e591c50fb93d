"""Shared test fixtures.

Real media comes from ../shared/data beside the checkout (or $SHARED_DATA). Tests that
need it fail, never skip, when it is missing: a skipped test would hide that CI did not
check what it claims to.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_REFERENCE = SHARED_DATA.parent / "reference"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Generated files are signed (core/provenance.py): tests keep their self-signed
# credential in a temporary folder, never in the user's ~/.config.
os.environ.setdefault("MOTION_TRANSFER_CONFIG", tempfile.mkdtemp(prefix="motion-transfer-config-"))


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


@pytest.fixture
def taichi_root(shared_data, tmp_path) -> Path:
    """Original layout with the two real Tai-Chi test clips (256 px) as the train split
    (symlinks into ../shared/data: nothing copied)."""
    root = tmp_path / "taichi"
    (root / "train").mkdir(parents=True)
    for name in ("1", "2"):
        (root / "train" / f"taichi{name}").symlink_to(shared_data / "bodies" / "dwnet-taichi" / name)
    return root


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray on 2 CPUs for one test module."""
    from core.ray_runner import init_ray, shutdown_ray
    init_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture(scope="module")
def config():
    """The tiny FOMM config (64x64) for animation tests."""
    from fomm.config import load_config
    return load_config("tiny")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, config):
    """An untrained tiny FOMM saved as a released checkpoint is (state dicts, no config)."""
    import torch

    from fomm.registry import build_model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(build_model(config).checkpoint_state(), path)
    return path


@pytest.fixture(scope="module")
def model(config, checkpoint):
    """The tiny FOMM loaded the way `pipeline run animate` loads a model, on the CPU."""
    import torch

    from fomm.animation import load_animation_model
    return load_animation_model(config, checkpoint, torch.device("cpu"))

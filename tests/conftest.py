"""Shared fixtures: small generated datasets (never committed) and the optional evaluation material."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audiotag
from audiotag.data.synthetic import DemoSpec, make_demo_dataset

# In-process runs compute as the CLI's subprocesses do (tests compare them bit for bit).
audiotag.use_fast_mkl()

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path in ../shared, or skip the test (with the reason) when the material is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"evaluation material {path} is not present (set AUDIOTAG_SHARED to its folder)")
    return path


# A demo dataset small enough for seconds-long tests: 4 curated clips per class.
SMALL_DEMO = DemoSpec(seed=7, n_curated=56, n_noisy=28, n_test=28, max_duration_s=3.0)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A read-only-by-convention demo dataset; copy it (``demo_copy``) before changing files."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", SMALL_DEMO)


@pytest.fixture
def demo_copy(demo_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(demo_data, dst)
    return dst


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """The shared benchmark generator's --scale tiny dataset (built once per session, ~10 s)."""
    script = shared_path("bench", "make_dataset.py")
    out = tmp_path_factory.mktemp("bench") / "tiny"
    subprocess.run([sys.executable, str(script), "--out", str(out), "--scale", "tiny"], check=True,
                   stdout=subprocess.DEVNULL)
    return out

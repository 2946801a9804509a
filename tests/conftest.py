"""Shared fixtures: a small synthetic MIMIC-CXR-JPG tree written once per test session.

`demo_raw` is read-only by convention: a test that changes files should take `demo_copy` (a
private copy under tmp_path) or write its own tree with the `make_demo` fixture:
`make_demo(tmp_path / "raw", n_patients=5, seed=1, image_size=64)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr.mimic.demo import DemoSummary, write_demo

DEMO_PATIENTS = 40
DEMO_SEED = 0


def make_demo(
    out: Path, n_patients: int = DEMO_PATIENTS, seed: int = DEMO_SEED, **kw
) -> DemoSummary:
    """Write a demo tree into `out` (quietly); for tests that need their own copy or options."""
    return write_demo(out, n_patients=n_patients, seed=seed, progress=False, **kw)


def copy_demo(src: Path, tmp_path: Path) -> Path:
    """A private, writable copy of a demo tree under `tmp_path`."""
    dst = tmp_path / "raw"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory) -> tuple[Path, DemoSummary]:
    out = tmp_path_factory.mktemp("demo") / "raw"
    return out, make_demo(out)


@pytest.fixture(scope="session")
def demo_raw(demo_tree) -> Path:
    """Root of a 40-patient demo tree (seed 0, default 256 px images). Do not modify."""
    return demo_tree[0]


@pytest.fixture(scope="session")
def demo_summary(demo_tree) -> DemoSummary:
    return demo_tree[1]


@pytest.fixture
def demo_copy(demo_raw, tmp_path) -> Path:
    """A writable copy of `demo_raw` at tmp_path / "raw"."""
    return copy_demo(demo_raw, tmp_path)


@pytest.fixture(name="make_demo")
def make_demo_fixture():
    """`make_demo(out, n_patients=40, seed=0, **write_demo_kwargs) -> DemoSummary`."""
    return make_demo

"""What pyproject.toml promises a user installing cxr."""

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_requires_python_has_no_upper_bound():
    """An upper bound (it was <3.12) refuses every newer Python, though no dependency needs it."""
    spec = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    assert spec.startswith(">=3.11") and "<" not in spec

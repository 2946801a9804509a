"""Where the stages read and write, from one data root (`--data-dir`, `CXR_DATA_DIR`, or ./data).

The CLI resolves the root once per invocation (`resolve_paths`) and hands every command the same
`DataPaths`, which also remembers where the root came from, so a message about a missing input
can say which data root was in force.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "data"
ENV_VAR = "CXR_DATA_DIR"
DEFAULT_SOURCE = "the default: no --data-dir, no $CXR_DATA_DIR"
_CACHE_NAME = re.compile(r"cache-(\d+)")


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    return resolve_paths(explicit).root


def resolve_paths(explicit: str | os.PathLike[str] | None = None) -> DataPaths:
    """The data root: `--data-dir` when given, else $CXR_DATA_DIR, else ./data."""
    if explicit:
        return DataPaths(Path(explicit), "--data-dir")
    env = os.environ.get(ENV_VAR)
    if env:
        return DataPaths(Path(env), f"${ENV_VAR}")
    return DataPaths(Path(DEFAULT_ROOT), DEFAULT_SOURCE)


@dataclass(frozen=True)
class DataPaths:
    root: Path
    source: str = "--data-dir"  # where the root came from, for messages

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def manifest(self) -> Path:
        return self.processed / "manifest.parquet"

    @property
    def interim(self) -> Path:
        return self.root / "interim"

    def cache(self, size: int) -> Path:
        return self.interim / f"cache-{size}"

    def caches(self) -> dict[int, Path]:
        """The cache directories present under interim/, by size (complete or not)."""
        if not self.interim.is_dir():
            return {}
        found = {}
        for p in self.interim.iterdir():
            m = _CACHE_NAME.fullmatch(p.name)
            if m and p.is_dir():
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))

    @property
    def given(self) -> bool:
        """Whether the root was asked for (--data-dir or $CXR_DATA_DIR), not the default."""
        return self.source != DEFAULT_SOURCE

    def describe(self) -> str:
        """`data root /abs/data (--data-dir)`: which root was in force, for messages."""
        return f"data root {self.root.resolve()} ({self.source})"

    def holds(self, path: str | os.PathLike[str]) -> bool:
        """Whether `path` lies under this data root."""
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

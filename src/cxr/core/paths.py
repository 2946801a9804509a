"""Where the stages read and write, from one data root (`--data-dir`, `CXR_DATA_DIR`, or ./data).

The CLI resolves the root once per invocation (`resolve_paths`) and hands every command the same
`DataPaths`, which also remembers where the root came from, so a message about a missing input
can say which data root was in force.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "data"
ENV_VAR = "CXR_DATA_DIR"
DEFAULT_SOURCE = "the default: no --data-dir, no $CXR_DATA_DIR"


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

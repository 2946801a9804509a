"""Where the stages read and write, from one data root (`--data-dir`, `CXR_DATA_DIR`, or ./data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CXR_DATA_DIR") or "data")


@dataclass(frozen=True)
class DataPaths:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def manifest(self) -> Path:
        return self.root / "processed" / "manifest.parquet"

    def cache(self, size: int) -> Path:
        return self.root / "interim" / f"cache-{size}"

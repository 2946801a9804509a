"""Whether data came from `cxr demo`: the hidden marker it writes at the raw root, and the
manifest's record of it. Every stage that reads such data says so, so synthetic figures are never
taken for real ones."""

from __future__ import annotations

import os
from pathlib import Path

DEMO_NOTE = (
    "synthetic demo data: written by `cxr demo`, not MIMIC-CXR-JPG; "
    "nothing learnt or measured on it applies to real patients"
)


def is_demo_tree(raw: str | os.PathLike[str]) -> bool:
    """Whether `raw` is a tree written by `cxr demo` (its hidden marker file is there)."""
    from cxr.mimic.demo import MARKER

    return os.path.lexists(Path(raw) / MARKER)


def manifest_is_demo(manifest: str | os.PathLike[str]) -> bool:
    """Whether the manifest was built from a `cxr demo` tree: manifest.json says so (written by
    `cxr manifest`), or, for a manifest.json without the key, its raw root holds the marker."""
    from cxr.mimic.manifest import read_manifest_info

    info = read_manifest_info(manifest)
    if "synthetic_demo" in info:
        return bool(info["synthetic_demo"])
    raw = info.get("raw_dir")
    return bool(raw) and is_demo_tree(raw)

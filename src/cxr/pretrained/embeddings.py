"""Embeddings on disk: one float16 row per manifest image, written once by `cxr embed`.

Layout of `<data root>/interim/embed-<name>/` (the contract `cxr probe` reads):

    embeddings.npy  float16 (N, D), rows in keys order; rows of unreadable images are zeros
    keys.parquet    dicom_id, image_path of each row (the path's patient folder masked)
    index.parquet   dicom_id, row, ok, error (written once every row has been attempted)
    embed.json      name, spec, dim, n, images_sha256, source provenance, created, cxr_version,
                    complete
    journal/        completion records, one JSON line per finished batch (as the image cache)

The store is complete when index.parquet exists and embed.json says `"complete": true`; a store
killed half-way is resumed by the next `cxr embed` from its journal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cxr.core.errors import InputError, MissingInput

VECTORS = "embeddings.npy"
KEYS = "keys.parquet"
INDEX = "index.parquet"
META = "embed.json"
JOURNAL = "journal"


@dataclass(frozen=True)
class Embeddings:
    dir: Path
    vectors: np.ndarray  # read-only memmap (N, D) float16
    index: pl.DataFrame  # dicom_id, row, ok, error
    meta: dict

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows_for(self, dicom_ids) -> np.ndarray:
        """Row numbers of these images (InputError naming the first one the store lacks or
        could not read)."""
        ok = self.index.filter(pl.col("ok"))
        lookup = dict(zip(ok["dicom_id"].to_list(), ok["row"].to_list(), strict=True))
        ids = list(dicom_ids)
        missing = [d for d in ids if d not in lookup]
        if missing:
            raise InputError(
                f"{self.dir}: no embedding for {len(missing)} of the {len(ids)} images asked for "
                f"(first: {missing[0]}); run `cxr embed` again for this manifest"
            )
        return np.fromiter((lookup[d] for d in ids), dtype=np.int64, count=len(ids))


def embed_dir(interim: Path, name: str) -> Path:
    return Path(interim) / f"embed-{name}"


def resolve_embeddings(name_or_dir: str | os.PathLike[str], interim: Path) -> Path:
    """`--embeddings NAME` (under <data root>/interim/embed-NAME) or a directory path."""
    given = Path(name_or_dir)
    named = embed_dir(interim, str(name_or_dir))
    # A bare name is the store under interim first: a folder of that name in the current
    # directory (e.g. downloaded weights called rad-dino/) must not shadow it.
    if (given / META).exists() or (os.sep in str(name_or_dir) and given.is_dir()):
        return given
    if named.exists() or not given.is_dir():
        return named
    return given


def load_embeddings(directory: str | os.PathLike[str]) -> Embeddings:
    """A complete store, memory-mapped; MissingInput / InputError (one line) otherwise."""
    d = Path(directory)
    meta_path = d / META
    if not meta_path.is_file():
        raise MissingInput(d, "embeddings", "`cxr embed --model NAME` writes them")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path}: not readable JSON ({exc})") from None
    if not meta.get("complete") or not (d / INDEX).is_file():
        raise InputError(
            f"{d}: embeddings incomplete (a `cxr embed` was stopped); run the same `cxr embed` "
            "again to finish them"
        )
    try:
        vectors = np.load(d / VECTORS, mmap_mode="r")
        index = pl.read_parquet(d / INDEX)
        keys = pl.read_parquet(d / KEYS, columns=["dicom_id"])
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{d}: damaged embeddings ({type(exc).__name__})") from None
    expected = (meta.get("n"), meta.get("dim"))
    if vectors.ndim != 2 or vectors.dtype != np.float16 or vectors.shape != expected:
        raise InputError(
            f"{d / VECTORS}: expected float16 {expected} as embed.json says, found "
            f"{vectors.dtype} {vectors.shape}"
        )
    if index.height != len(vectors) or keys["dicom_id"].to_list() != index["dicom_id"].to_list():
        raise InputError(f"{d}: index.parquet and keys.parquet disagree; run `cxr embed --force`")
    return Embeddings(d, vectors, index, meta)


def write_index(d: Path, dicom_ids, errors: list[str | None]) -> None:
    from cxr.core.atomic import atomic_path

    index = pl.DataFrame(
        {
            "dicom_id": list(dicom_ids),
            "row": np.arange(len(errors), dtype=np.int64),
            "ok": [e is None for e in errors],
            "error": errors,
        },
        schema={"dicom_id": pl.String, "row": pl.Int64, "ok": pl.Boolean, "error": pl.String},
    )
    with atomic_path(d / INDEX) as tmp:
        index.write_parquet(tmp, statistics=False)


def write_store(
    d: str | os.PathLike[str],
    keys: pl.DataFrame,
    vectors: np.ndarray,
    meta: dict,
    errors: list[str | None] | None = None,
) -> Path:
    """A complete store from arrays in one go (fixtures, small sets); `cxr embed` builds the
    same layout row batch by row batch. `keys` has dicom_id and image_path, one row per vector."""
    from cxr.core.atomic import atomic_path, write_text_atomic

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(vectors, dtype=np.float16)
    errors = errors if errors is not None else [None] * len(vectors)
    with atomic_path(d / VECTORS) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors)
    with atomic_path(d / KEYS) as tmp:
        keys.select("dicom_id", "image_path").write_parquet(tmp)
    write_index(d, keys["dicom_id"], errors)
    meta = {**meta, "dim": int(vectors.shape[1]), "n": len(vectors), "complete": True}
    write_text_atomic(d / META, json.dumps(meta, indent=2) + "\n")
    return d

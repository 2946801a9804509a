"""A tiny manifest + image cache built directly per the contracts, with a planted signal.

Each label j lights up its own square of the image when positive, so a small CNN learns it in a
couple of epochs. Used by the data and training tests (kept out of conftest.py so it merges cleanly).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

from cxr.mimic.schema import LABELS


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))


def make_fixture(
    root: Path,
    n_studies: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
    failed: int = 0,
) -> tuple[Path, Path]:
    """Write root/manifest.parquet (+ .json) and root/cache-<size>/; return their paths."""
    n_studies = n_studies or {"train": 48, "validate": 16, "test": 8}
    rng = np.random.default_rng(seed)
    rows, images = [], []
    subject = 10_000_000
    study = 50_000_000
    grid = int(np.ceil(np.sqrt(len(LABELS))))
    cell = size // grid
    for split, n in n_studies.items():
        for _ in range(n):
            subject += 1
            study += int(rng.integers(1, 100))
            labels = rng.choice(
                np.array([1.0, 0.0, -1.0, np.nan], dtype=np.float32),
                size=len(LABELS),
                p=[0.3, 0.3, 0.1, 0.3],
            )
            labels[LABELS.index("No Finding")] = 1.0 if rng.random() < 0.3 else np.nan
            for _ in range(int(rng.integers(1, 3))):
                img = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
                for j, v in enumerate(labels):
                    if v == 1.0:
                        r, c = divmod(j, grid)
                        img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] += 150
                images.append(img)
                rows.append(
                    {
                        "dicom_id": _dicom_id(rng),
                        "study_id": study,
                        "subject_id": subject,
                        "split": split,
                        "view_position": "PA",
                        "image_path": f"files/p{str(subject)[:2]}/p{subject}/s{study}/x.jpg",
                        "report_path": None,
                        **{name: labels[j] for j, name in enumerate(LABELS)},
                        "rows": size,
                        "columns": size,
                    }
                )
    df = pl.DataFrame(rows).with_columns(
        [pl.col(name).cast(pl.Float32) for name in LABELS]
        + [pl.col("study_id").cast(pl.Int64), pl.col("subject_id").cast(pl.Int64)]
    )
    order = df.with_row_index("_i").sort(["split", "study_id", "dicom_id"])["_i"].to_numpy()
    df = df[order]
    images = np.stack(images)[order]
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.parquet"
    df.write_parquet(manifest)
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"sha256": sha, "raw_dir": str(root)}))
    cache = root / f"cache-{size}"
    cache.mkdir()
    # Cache rows in another order than the manifest, as a parallel preprocess may leave them.
    perm = rng.permutation(len(df))
    np.save(cache / "images.npy", images[perm])
    row_of = np.empty(len(df), dtype=np.int64)
    row_of[perm] = np.arange(len(df))
    ok = np.ones(len(df), dtype=bool)
    if failed:
        ok[rng.choice(np.flatnonzero(df["split"].to_numpy() == "train"), failed, replace=False)] = (
            False
        )
    pl.DataFrame(
        {
            "dicom_id": df["dicom_id"],
            "row": row_of,
            "ok": ok,
            "error": [None if k else "decode error" for k in ok],
        },
        schema={"dicom_id": pl.String, "row": pl.Int64, "ok": pl.Boolean, "error": pl.String},
    ).write_parquet(cache / "index.parquet")
    (cache / "cache.json").write_text(
        json.dumps({"size": size, "method": "test", "manifest_sha256": sha, "n": len(df)})
    )
    return manifest, cache

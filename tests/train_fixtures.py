"""A tiny manifest, image cache and checkpoint with a planted signal, built by cxr's own code.

Each label j lights up its own square of the image when positive, so a small CNN learns it in a
couple of epochs. The images are written as PNG files and cached by `cxr.imaging.cache.build_cache`
(the code `cxr preprocess` runs), and checkpoints by `cxr.training.checkpoint`, so a change of
either format reaches these tests. Used by the data, training and predict tests (kept out of
conftest.py so it merges cleanly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

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
    """Write root/raw/ (PNG files), root/manifest.parquet (+ .json) and root/cache-<size>/.

    `failed` train images are written as bytes no decoder reads, so the cache records them as
    failed rows. Returns (manifest path, cache directory).
    """
    from cxr.imaging.cache import PreprocessConfig, build_cache

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
                dicom_id = _dicom_id(rng)
                images.append(img)
                rows.append(
                    {
                        "dicom_id": dicom_id,
                        "study_id": study,
                        "subject_id": subject,
                        "split": split,
                        "view_position": "PA",
                        "image_path": f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.png",
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
    raw = root / "raw"
    unreadable = set()
    if failed:
        train_rows = np.flatnonzero(df["split"].to_numpy() == "train")
        unreadable = {int(i) for i in rng.choice(train_rows, failed, replace=False)}
    for i, (path, img) in enumerate(zip(df["image_path"], images, strict=True)):
        target = raw / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if i in unreadable:
            target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 4)
        else:
            Image.fromarray(img).save(target, format="PNG")
    # The manifest's order, as `cxr manifest` writes it.
    df = df.sort(["split", "study_id", "dicom_id"])
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.parquet"
    df.write_parquet(manifest)
    (root / "manifest.json").write_text(json.dumps({"raw_dir": str(raw)}))
    cache = root / f"cache-{size}"
    result = build_cache(
        PreprocessConfig(manifest=manifest, cache_dir=cache, raw=raw, size=size, workers=1)
    )
    assert result.complete and len(result.failed) == failed
    return manifest, cache


def write_checkpoint(
    path: Path,
    *,
    arch: str = "cxr_small",
    labels: list[str] | tuple[str, ...] = LABELS,
    image_size: int = 32,
    source_size: int | None = None,
    mean: float = 0.5,
    std: float = 0.25,
    method: str | None = None,
    seed: int = 0,
) -> Path:
    """A checkpoint of a randomly initialised model, as `cxr train` saves best.pt."""
    import torch

    from cxr.imaging.images import METHOD
    from cxr.training.checkpoint import make_checkpoint, save_checkpoint
    from cxr.training.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_labels=len(labels), in_chans=1)
    ckpt = make_checkpoint(
        model,
        arch=arch,
        labels=list(labels),
        preprocess={
            "image_size": image_size,
            "source_size": source_size or image_size,
            "mean": mean,
            "std": std,
            "in_chans": 1,
            "method": METHOD if method is None else method,
        },
        label_policy={"uncertain": "ignore", "missing": "zeros", "overrides": {}},
        config={"model": arch, "image_size": image_size, "cache_size": source_size or 0},
        epoch=1,
        val_metrics={"val_macro_auroc": 0.5},
    )
    save_checkpoint(path, ckpt)
    return path

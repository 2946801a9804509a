"""A tiny data root (manifest, image cache, checkpoint) built per the shared contracts, for the
evaluate and predict tests. Subject ids are recorded so the privacy tests can look for them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cxr.mimic.schema import LABELS

SIZE = 32


@dataclass
class Fixture:
    root: Path
    manifest: Path
    cache: Path
    checkpoint: Path
    subject_ids: list[int]


def _dicom_id(i: int) -> str:
    return f"{i:08x}-abcdefab-cdefabcd-efabcdef-abcdefab"


def make_checkpoint(
    path: Path, image_size: int = SIZE, policy: dict | None = None, cache_size: int = 0
) -> Path:
    import torch

    from cxr.training.models import create_model

    torch.manual_seed(0)
    model = create_model("cxr_small", num_labels=len(LABELS), in_chans=1)
    ckpt = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "arch": "cxr_small",
        "labels": list(LABELS),
        "image_size": image_size,
        "normalization": {"mean": 0.5, "std": 0.25},
        "in_chans": 1,
        "label_policy": policy
        or {
            "uncertain": "ignore",
            "missing": "zeros",
            "overrides": {"Edema": {"missing": "ignore"}},
        },
        # cache_size: the squares training read (0: image_size), as cxr train records it
        "config": {"arch": "cxr_small", "epochs": 1, "lr": 0.001, "cache_size": cache_size},
        "epoch": 1,
        "val_metrics": {"macro_auroc": 0.5},
        "cxr_version": "0.1.0",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def make_data(root: Path, seed: int = 0) -> Fixture:
    rng = np.random.default_rng(seed)
    rows = []
    subject_ids = []
    i = 0
    study = 50000001
    for split, n_studies in (("train", 3), ("validate", 14), ("test", 16)):
        for s in range(n_studies):
            subject = 10000000 + 1111 * (len(subject_ids) + 1)
            subject_ids.append(subject)
            labels = rng.choice(
                [1.0, 0.0, -1.0, np.nan], size=len(LABELS), p=[0.4, 0.35, 0.1, 0.15]
            )
            for _ in range(1 + s % 2):  # one or two images per study
                rows.append(
                    {
                        "dicom_id": _dicom_id(i),
                        "study_id": study,
                        "subject_id": subject,
                        "split": split,
                        "view_position": "PA",
                        "image_path": f"files/p{str(subject)[:2]}/p{subject}/s{study}/{_dicom_id(i)}.jpg",
                        "report_path": None,
                        **{lab: np.float32(v) for lab, v in zip(LABELS, labels, strict=True)},
                        "rows": 40,
                        "columns": 30,
                        "impression": f"No acute process. Study {s}." if s % 3 else None,
                    }
                )
                i += 1
            study += 1
    df = pl.DataFrame(rows).with_columns(pl.col(list(LABELS)).cast(pl.Float32))
    df = df.sort("split", "study_id", "dicom_id")
    manifest = root / "processed" / "manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(manifest)

    cache = root / "interim" / f"cache-{SIZE}"
    cache.mkdir(parents=True)
    n = df.height
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.zeros((n, SIZE, SIZE), np.uint8)
    for k in range(n):
        images[k] = (128 + 100 * np.sin(xx / (3 + k % 5)) * np.cos(yy / 4)).astype(np.uint8)
    np.save(cache / "images.npy", images)
    ok = np.ones(n, bool)
    bad = int(np.flatnonzero((df["split"] == "test").to_numpy())[-1])
    ok[bad] = False  # one unreadable test image: left out and counted
    pl.DataFrame(
        {
            "dicom_id": df["dicom_id"],
            "row": np.arange(n, dtype=np.int64),
            "ok": ok,
            "error": [None if k != bad else "cannot decode JPEG" for k in range(n)],
        },
        schema={"dicom_id": pl.String, "row": pl.Int64, "ok": pl.Boolean, "error": pl.String},
    ).write_parquet(cache / "index.parquet")
    (cache / "cache.json").write_text(
        json.dumps({"size": SIZE, "method": "test", "manifest_sha256": "0" * 64, "n": n})
    )
    ckpt = make_checkpoint(root.parent / "models" / "run1" / "best.pt")
    return Fixture(root, manifest, cache, ckpt, subject_ids)

"""A data root for the `cxr probe` tests: a manifest-shaped table (no images: the probe reads only
embeddings) and an embedding store written with `cxr.pretrained.embeddings.write_store`, with a
signal planted along its own direction for some labels and none for the others.

Subject ids are distinctive numbers recorded so the privacy tests can look for them. One label
(`RARE`) is positive only in train patients outside the first `small_fraction` subset of the
seeded permutation, so at that fraction its probe has one class to learn from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cxr.core.privacy import mask_subject
from cxr.evaluation.probe import patient_subsets
from cxr.mimic.schema import LABELS, image_relpath
from cxr.pretrained.embeddings import write_store

PLANTED = ("Cardiomegaly", "Edema", "Pleural Effusion", "Support Devices")
RARE = "Fracture"
NAME = "toy"


@dataclass
class ProbeFixture:
    root: Path
    manifest: Path
    store: Path
    subject_ids: list[int]
    train_subjects: list[int]


def _dicom_id(i: int) -> str:
    return f"{i:08x}-feedface-0000beef-00000000-{i:08x}"


def make_manifest(
    n_patients: dict[str, int], seed: int = 0, small_fraction: float = 0.05, subset_seed: int = 0
) -> pl.DataFrame:
    """Image rows of a manifest: 1-3 studies per patient, 1-2 PA images per study, CheXpert values
    1/0/-1/blank per study (No Finding 1 or blank)."""
    rng = np.random.default_rng(seed)
    rows = []
    image, study, k = 0, 50_000_001, 0
    patients: dict[str, list[int]] = {}
    for split, n in n_patients.items():
        patients[split] = [10_000_000 + 7_919 * (k + i + 1) for i in range(n)]
        k += n
    rare_train = set(patients["train"]) - set(
        patient_subsets(patients["train"], [small_fraction], subset_seed)[0].tolist()
    )
    rare_train = set(sorted(rare_train)[::4])  # a quarter of the train patients outside it
    for split, subjects in patients.items():
        for subject in subjects:
            for _ in range(1 + int(rng.integers(0, 3))):
                values = rng.choice(
                    [1.0, 0.0, -1.0, np.nan], size=len(LABELS), p=[0.3, 0.4, 0.1, 0.2]
                )
                values[LABELS.index("No Finding")] = rng.choice([1.0, np.nan])
                rare = LABELS.index(RARE)
                positive = subject in rare_train if split == "train" else rng.random() < 0.3
                values[rare] = 1.0 if positive else rng.choice([0.0, np.nan])
                for _ in range(1 + int(rng.integers(0, 2))):
                    dicom = _dicom_id(image)
                    rows.append(
                        {
                            "dicom_id": dicom,
                            "study_id": study,
                            "subject_id": subject,
                            "split": split,
                            "view_position": "PA",
                            "image_path": image_relpath(subject, study, dicom),
                            "report_path": None,
                            **dict(zip(LABELS, values.tolist(), strict=True)),
                        }
                    )
                    image += 1
                study += 1
    df = pl.DataFrame(rows, schema_overrides={"report_path": pl.String})
    return df.with_columns(pl.col(list(LABELS)).cast(pl.Float32)).sort(
        "split", "study_id", "dicom_id"
    )


def planted_vectors(df: pl.DataFrame, dim: int, strength: float = 2.5, seed: int = 1) -> np.ndarray:
    """Noise, plus `strength` along its own axis for each planted label the image's study has."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(df.height, dim))
    for axis, label in enumerate(PLANTED):
        x[:, axis] += strength * (df[label].to_numpy() == 1)
    return (x * 0.5 + 3.0).astype(np.float16)  # an offset and scale standardisation removes


def make_probe_data(
    root: Path,
    n_patients: dict[str, int] | None = None,
    dim: int = 16,
    seed: int = 0,
    small_fraction: float = 0.05,
    unreadable: int = 0,
    absent: int = 0,
) -> ProbeFixture:
    """The manifest under root/processed and a complete store under root/interim/embed-toy;
    `unreadable` test images are recorded as failed in the store, `absent` ones left out of it."""
    n_patients = n_patients or {"train": 120, "validate": 50, "test": 60}
    df = make_manifest(n_patients, seed, small_fraction)
    manifest = root / "processed" / "manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(manifest)
    (manifest.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(root / "raw")}))
    # The store keeps image paths with the patient folder masked, as `cxr embed` writes them.
    keys = df.select("dicom_id", pl.col("image_path").map_elements(mask_subject, pl.String))
    vectors = planted_vectors(df, dim)
    errors: list[str | None] = [None] * df.height
    test_rows = np.flatnonzero(df["split"].to_numpy() == "test")
    for i in test_rows[:unreadable]:
        errors[i] = "not a JPEG"
        vectors[i] = 0
    if absent:
        keep = np.ones(df.height, dtype=bool)
        keep[test_rows[-absent:]] = False
        keys, vectors = keys.filter(pl.Series(keep)), vectors[keep]
        errors = [e for e, k in zip(errors, keep, strict=True) if k]
    store = write_store(
        root / "interim" / f"embed-{NAME}",
        keys,
        vectors,
        {
            "name": NAME,
            "spec": "toy:planted",
            "source": {"weights": "none", "planted": list(PLANTED)},
        },
        errors,
    )
    train_subjects = df.filter(pl.col("split") == "train")["subject_id"].unique().to_list()
    return ProbeFixture(
        root, manifest, store, sorted(df["subject_id"].unique().to_list()), train_subjects
    )

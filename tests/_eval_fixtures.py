"""A tiny data root for the evaluate, compare and predict tests, built with the project's own code:
JPEGs on disk, a manifest with its manifest.json, an image cache built by `cxr.imaging.cache`, and
checkpoints made by `cxr.training.checkpoint`, so a change to either format cannot pass unnoticed.

Patients have several studies (as in MIMIC-CXR's test split), so patient resampling is exercised;
subject ids are recorded so the privacy tests can look for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cxr.mimic.schema import LABELS, RADIOLOGIST_CSV, image_relpath
from xray_fixtures import write_jpeg, xray_like

SIZE = 32
# (split, patients, studies): several studies per patient in validate and test.
SPLITS = (("train", 2, 3), ("validate", 6, 14), ("test", 6, 18))


@dataclass
class Fixture:
    root: Path
    raw: Path
    manifest: Path
    cache: Path
    checkpoint: Path
    subject_ids: list[int]


def _dicom_id(i: int) -> str:
    return f"{i:08x}-abcdefab-cdefabcd-efabcdef-abcdefab"


def make_checkpoint(
    path: Path,
    image_size: int = SIZE,
    policy: dict | None = None,
    cache_size: int = 0,
    seed: int = 0,
) -> Path:
    """A cxr_small checkpoint with random weights (seeded), saved by the training code."""
    import torch

    from cxr.imaging.images import METHOD
    from cxr.training.checkpoint import make_checkpoint as build
    from cxr.training.checkpoint import save_checkpoint
    from cxr.training.models import create_model

    torch.manual_seed(seed)
    model = create_model("cxr_small", num_labels=len(LABELS), in_chans=1)
    ckpt = build(
        model,
        arch="cxr_small",
        labels=LABELS,
        preprocess={
            "image_size": image_size,
            "source_size": cache_size or image_size,
            "mean": 0.5,
            "std": 0.25,
            "in_chans": 1,
            "method": METHOD,
        },
        label_policy=policy
        or {
            "uncertain": "ignore",
            "missing": "zeros",
            "overrides": {"Edema": {"missing": "ignore"}},
        },
        # cache_size: the squares training read (0: image_size), as cxr train records it
        config={"arch": "cxr_small", "epochs": 1, "lr": 0.001, "cache_size": cache_size},
        epoch=1,
        val_metrics={"macro_auroc": 0.5},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, ckpt)
    return path


def make_data(root: Path, seed: int = 0) -> Fixture:
    from cxr.imaging.cache import PreprocessConfig, build_cache

    rng = np.random.default_rng(seed)
    raw = root / "raw"
    rows, subject_ids = [], []
    i, study = 0, 50000001
    for split, n_patients, n_studies in SPLITS:
        patients = [10000000 + 1111 * (len(subject_ids) + k + 1) for k in range(n_patients)]
        subject_ids += patients
        for s in range(n_studies):
            subject = patients[s % n_patients]
            labels = rng.choice(
                [1.0, 0.0, -1.0, np.nan], size=len(LABELS), p=[0.4, 0.35, 0.1, 0.15]
            )
            labels[LABELS.index("No Finding")] = rng.choice([1.0, np.nan])
            for _ in range(1 + s % 2):  # one or two images per study
                rel = image_relpath(subject, study, _dicom_id(i))
                write_jpeg(raw / rel, xray_like(40, 30, seed=i))
                rows.append(
                    {
                        "dicom_id": _dicom_id(i),
                        "study_id": study,
                        "subject_id": subject,
                        "split": split,
                        "view_position": "PA",
                        "image_path": rel,
                        "report_path": None,
                        **{lab: np.float32(v) for lab, v in zip(LABELS, labels, strict=True)},
                        "rows": 40,
                        "columns": 30,
                        "impression": f"No acute process. Study {s}." if s % 3 else None,
                    }
                )
                i += 1
            study += 1
    df = pl.DataFrame(rows, schema_overrides={"report_path": pl.String})
    df = df.with_columns(pl.col(list(LABELS)).cast(pl.Float32)).sort(
        "split", "study_id", "dicom_id"
    )
    manifest = root / "processed" / "manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(manifest)
    (manifest.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(raw.resolve())}))
    # One unreadable test image: the cache records it, evaluation leaves it out and counts it.
    bad = df.filter(pl.col("split") == "test")["image_path"][-1]
    (raw / bad).write_bytes(b"not a jpeg")
    cache = root / "interim" / f"cache-{SIZE}"
    build_cache(PreprocessConfig(manifest=manifest, cache_dir=cache, size=SIZE, workers=1))
    ckpt = make_checkpoint(root.parent / "models" / "run1" / "best.pt")
    return Fixture(root, raw, manifest, cache, ckpt, subject_ids)


def write_radiologist_labels(fx: Fixture, seed: int = 1) -> pl.DataFrame:
    """The 2.1.0 radiologist file for two thirds of the test studies, Lung Opacity under its
    radiologist name, some cells disagreeing with the CheXpert labels; returns what it wrote
    (under CheXpert names) for the tests to check against."""
    rng = np.random.default_rng(seed)
    studies = (
        pl.read_parquet(fx.manifest)
        .filter(pl.col("split") == "test")
        .group_by("study_id", maintain_order=True)
        .first()
        .sort("study_id")
    )
    chosen = studies.filter(pl.int_range(pl.len()) % 3 != 2)
    table = {"study_id": chosen["study_id"].to_list()}
    for lab in LABELS:
        values = chosen[lab].to_numpy().astype(np.float64)
        flip = rng.random(values.size) < (0.0 if lab == "No Finding" else 0.2)
        values[flip] = rng.choice([1.0, 0.0, -1.0, np.nan], size=int(flip.sum()))
        table[lab] = values
    written = pl.DataFrame(table)

    def text(v: float) -> str:
        return "" if np.isnan(v) else f"{v:.1f}"

    header = ["study_id", *("Airspace Opacity" if lab == "Lung Opacity" else lab for lab in LABELS)]
    lines = [",".join(header)]
    for r in written.iter_rows():
        lines.append(",".join([str(r[0]), *(text(v) for v in r[1:])]))
    (fx.raw / RADIOLOGIST_CSV).write_text("\n".join(lines) + "\n")
    return written


# The test split's patients in order of their subject ids get these sexes: 3 Female (shown at a
# minimum cell of 3), 2 Male and 1 Unknown (suppressed).
TEST_SEXES = ("Female", "Female", "Female", "Male", "Male", None)


def write_variant(fx: Fixture, name: str, seed: int = 2) -> Path:
    """A copy of the fixture manifest with the columns the optional sources add: demographics
    (sex per TEST_SEXES in the test split, Female elsewhere; an age group) and NegBio labels
    departing from the CheXpert ones in some cells, one test study without a NegBio row. It sits
    in its own folder with a manifest.json that points at the same raw root, and is read with
    --manifest (evaluation reads the cache by dicom_id, so the fixture's cache serves it)."""
    from cxr.mimic.schema import NEGBIO_LABELLED, label_column

    rng = np.random.default_rng(seed)
    df = pl.read_parquet(fx.manifest)
    test_subjects = sorted(df.filter(pl.col("split") == "test")["subject_id"].unique().to_list())
    sexes = dict(zip(test_subjects, TEST_SEXES, strict=True))
    df = df.with_columns(
        pl.col("subject_id")
        .replace_strict(sexes, default="Female", return_dtype=pl.String)
        .alias("sex"),
        pl.lit("60-80").alias("age_group"),
    )
    studies = df.select("study_id").unique().sort("study_id")["study_id"].to_list()
    unlabelled = df.filter(pl.col("split") == "test")["study_id"].max()
    columns = {}
    for lab in LABELS:
        values = df[lab].to_numpy().astype(np.float64)
        per_study = {}
        for sid in studies:
            per_study[sid] = rng.random() < 0.25
        flip = np.array([per_study[s] for s in df["study_id"].to_list()])
        if lab != "No Finding":
            values = np.where(flip, np.where(values == 1, 0.0, 1.0), values)
        values[df["study_id"].to_numpy() == unlabelled] = np.nan
        columns[label_column(lab, "negbio")] = pl.Series(values, dtype=pl.Float32)
    df = df.with_columns(
        (pl.col("study_id") != unlabelled).alias(NEGBIO_LABELLED),
        *(s.alias(n) for n, s in columns.items()),
    )
    path = fx.root / name / "manifest.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    (path.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(fx.raw.resolve())}))
    return path

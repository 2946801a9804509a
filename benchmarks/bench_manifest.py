"""Manifest build on full-scale CSVs against a plain pandas baseline, in one run.

    .venv/bin/python benchmarks/bench_manifest.py [--work benchmarks/_work/manifest] [--repeat 5]

Writes MIMIC-CXR-JPG 2.0.0-sized CSVs (377,110 metadata and split rows, 227,827 label rows, gzipped,
views and splits in the real proportions), then times:
- the build itself (read + check + select + paths; in-process, median of --repeat),
- a plain pandas baseline (read the three CSVs, filter PA, two merges, build paths),
- the whole `cxr manifest` process (median wall time and peak RSS via /usr/bin/time -v).
Goals on the 2-core machine: build < 1.0 s, process < 1.5 s, peak memory < 1.5 GB.
Needs pandas for the baseline: `.venv/bin/pip install -e '.[bench]'` (not a dependency of cxr).
"""

from __future__ import annotations

import argparse
import gzip
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from cxr.mimic import schema

N_PATIENTS, N_STUDIES, N_IMAGES, N_LABEL_ROWS = 65_379, 227_835, 377_110, 227_827
VIEWS = {  # ViewPosition counts of 2.0.0 (the remainder is blank, plus a few rare values)
    "AP": 147_169,
    "PA": 96_155,
    "LATERAL": 82_852,
    "LL": 35_129,
    "LAO": 40,
    "RAO": 30,
    "AP AXIAL": 20,
    "PA LLD": 15,
    "SWIMMERS": 10,
}


def write_full_scale(out: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    subjects = rng.choice(np.arange(10_000_000, 20_000_000), N_PATIENTS, replace=False)
    studies = rng.choice(np.arange(50_000_000, 60_000_000), N_STUDIES, replace=False)
    # Every patient gets a study, the rest are spread at random; every study gets an image.
    study_subject = np.concatenate([subjects, rng.choice(subjects, N_STUDIES - N_PATIENTS)])
    image_study = np.concatenate(
        [np.arange(N_STUDIES), rng.integers(0, N_STUDIES, N_IMAGES - N_STUDIES)]
    )
    hexes = rng.integers(0, 2**32, size=(N_IMAGES, 5), dtype=np.uint64)
    dicom = ["-".join(f"{v:08x}" for v in row) for row in hexes]
    # Patient-level split: 500 validate and 293 test patients.
    perm = rng.permutation(N_PATIENTS)
    part = np.full(N_PATIENTS, "train", dtype=object)
    part[perm[:500]] = "validate"
    part[perm[500:793]] = "test"
    split_of = dict(zip(subjects.tolist(), part.tolist(), strict=True))
    views = np.concatenate(
        [np.repeat(list(VIEWS), list(VIEWS.values())), np.full(N_IMAGES - sum(VIEWS.values()), "")]
    )
    rng.shuffle(views)
    img_subject = study_subject[image_study]
    img_study = studies[image_study]
    meaning = np.array([schema.VIEW_CODE_MEANINGS.get(v, "") for v in views], dtype=object)
    meta = pl.DataFrame(
        {
            "dicom_id": dicom,
            "subject_id": img_subject,
            "study_id": img_study,
            "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            "ViewPosition": pl.Series(views).replace("", None),
            "Rows": 3056,
            "Columns": 2544,
            "StudyDate": rng.integers(2100, 2200, N_IMAGES) * 10000 + 506,
            "StudyTime": rng.uniform(0, 235959, N_IMAGES).round(3),
            "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": pl.Series(meaning).replace("", None),
            "PatientOrientationCodeSequence_CodeMeaning": "Erect",
        }
    )
    split = meta.select(
        "dicom_id",
        "study_id",
        "subject_id",
        pl.col("subject_id").replace_strict(split_of, return_dtype=pl.String).alias("split"),
    )
    label_studies = rng.permutation(N_STUDIES)[:N_LABEL_ROWS]
    vals = rng.choice([1.0, 0.0, -1.0, np.nan], size=(N_LABEL_ROWS, 14), p=[0.15, 0.15, 0.05, 0.65])
    vals[:, schema.LABELS.index("No Finding")] = np.where(
        rng.random(N_LABEL_ROWS) < 0.3, 1.0, np.nan
    )
    chex = pl.DataFrame(
        {
            "subject_id": study_subject[label_studies],
            "study_id": studies[label_studies],
            **{lab: vals[:, i] for i, lab in enumerate(schema.LABELS)},
        }
    ).with_columns(pl.col(schema.LABELS).fill_nan(None))
    for df, name in (
        (chex, schema.CHEXPERT_CSV),
        (split, schema.SPLIT_CSV),
        (meta, schema.METADATA_CSV),
    ):
        (out / f"{name}.gz").write_bytes(gzip.compress(df.write_csv(float_precision=1).encode(), 6))
    (out / "files").mkdir(exist_ok=True)


def pandas_baseline(raw: Path) -> int:
    import pandas as pd

    chex = pd.read_csv(raw / f"{schema.CHEXPERT_CSV}.gz")
    split = pd.read_csv(raw / f"{schema.SPLIT_CSV}.gz")
    meta = pd.read_csv(raw / f"{schema.METADATA_CSV}.gz")
    meta = meta[meta["ViewPosition"] == "PA"]
    df = meta.merge(split[["dicom_id", "split"]], on="dicom_id").merge(
        chex, on=["subject_id", "study_id"]
    )
    s = df["subject_id"].astype(str)
    df["path"] = (
        "files/p"
        + s.str[:2]
        + "/p"
        + s
        + "/s"
        + df["study_id"].astype(str)
        + "/"
        + df["dicom_id"]
        + ".jpg"
    )
    return len(df)


def cxr_build(raw: Path) -> int:
    from cxr.mimic.manifest import ManifestConfig, build_manifest
    from cxr.mimic.tables import load_tables

    result = build_manifest(load_tables(raw), ManifestConfig(raw=raw, out=raw / "unused.parquet"))
    return result.manifest.height


def timed(fn, *args, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def process_run(raw: Path, out: Path, repeat: int) -> tuple[float, float]:
    cli = Path(sys.executable).with_name("cxr")
    cmd = [
        "/usr/bin/time",
        "-v",
        str(cli),
        "--quiet",
        "manifest",
        "--raw",
        str(raw),
        "--out",
        str(out),
    ]
    walls, peaks = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
        peaks.append(
            int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        )
    return statistics.median(walls), max(peaks) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/_work/manifest"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    raw = args.work / "raw"
    if not (raw / f"{schema.METADATA_CSV}.gz").exists():
        t0 = time.perf_counter()
        write_full_scale(raw)
        print(f"wrote full-scale CSVs in {time.perf_counter() - t0:.1f} s")
    sizes = {p.name: p.stat().st_size / 1e6 for p in raw.glob("*.gz")}
    print("inputs:", ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))
    cxr_build(raw)  # warm the page cache and imports
    t_cxr, n_cxr = timed(cxr_build, raw, repeat=args.repeat)
    t_pd, n_pd = timed(pandas_baseline, raw, repeat=args.repeat)
    wall, peak_mb = process_run(raw, args.work / "processed" / "manifest.parquet", args.repeat)
    print(
        f"cxr build (read, check, select, paths): {t_cxr:.3f} s median -> {n_cxr} images (goal < 1.0 s)"
    )
    print(f"pandas baseline (read, PA, 2 merges, paths): {t_pd:.3f} s median -> {n_pd} images")
    print(f"ratio pandas / cxr: {t_pd / t_cxr:.2f}x")
    print(
        f"`cxr manifest` whole process: {wall:.3f} s median wall (goal < 1.5 s), peak RSS {peak_mb:.0f} MB (goal < 1500)"
    )


if __name__ == "__main__":
    main()

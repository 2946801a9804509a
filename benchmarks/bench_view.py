"""`cxr view` response times: the study list over 20,000 studies and study pages, cache warm.

Writes a synthetic data root in a temporary directory (a manifest of N studies with the 14 label
columns and report sections, NegBio and radiologist files, two evaluations of the test split with
thresholds, report files and an image cache for the studies whose pages are timed), builds the
app as `cxr view` does, and times requests through Starlette's ASGI test client (the app's own
work: routing, the token cookie, filtering, HTML; no socket). Prints medians and 95th percentiles.

    PYTHONPATH=src python benchmarks/bench_view.py [--studies 20000] [--repeat 30] [--pages 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from cxr.mimic import schema

TOKEN = "bench"


def _dicom(i: int) -> str:
    return f"{i:08x}-00000000-11111111-22222222-33333333"


def write_root(root: Path, n_studies: int, n_pages: int, seed: int = 0) -> list[int]:
    """The synthetic data root; returns the study ids whose pages are timed."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True)
    study_ids = 50_000_000 + np.arange(n_studies)
    subjects = 10_000_000 + rng.integers(0, n_studies // 4, n_studies)
    split = np.where(np.arange(n_studies) % 10 == 0, "validate", "test")
    split[np.arange(n_studies) % 10 >= 5] = "train"
    n_img = rng.choice([1, 1, 2, 3], n_studies)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], (n_studies, 14), p=[0.25, 0.25, 0.1, 0.4])
    labels[:, schema.LABELS.index("No Finding")] = rng.choice([1.0, np.nan], n_studies)
    rows = []
    k = 0
    for i in range(n_studies):
        s = str(subjects[i])
        for _ in range(n_img[i]):
            rows.append(
                (
                    _dicom(k),
                    int(study_ids[i]),
                    int(subjects[i]),
                    str(split[i]),
                    i,
                    f"files/p{s[:2]}/p{s}/s{study_ids[i]}/{_dicom(k)}.jpg",
                    f"files/p{s[:2]}/p{s}/s{study_ids[i]}.txt",
                )
            )
            k += 1
    cols = list(zip(*rows, strict=True))
    m = pl.DataFrame(
        {
            "dicom_id": cols[0],
            "study_id": cols[1],
            "subject_id": cols[2],
            "split": cols[3],
            "view_position": ["PA"] * len(rows),
            "image_path": cols[5],
            "report_path": cols[6],
        }
    )
    idx = np.array(cols[4])
    m = m.with_columns(
        [pl.Series(lab, labels[idx, j], dtype=pl.Float32) for j, lab in enumerate(schema.LABELS)]
        + [
            pl.lit("Heart size is normal. No pleural effusion.").alias("findings"),
            pl.lit("No acute cardiopulmonary process.").alias("impression"),
            pl.lit("Cough.").alias("indication"),
            pl.lit(None, dtype=pl.String).alias("comparison"),
        ]
    ).sort("split", "study_id", "dicom_id")
    proc = root / "processed"
    proc.mkdir()
    m.write_parquet(proc / "manifest.parquet")
    (proc / "manifest.json").write_text(json.dumps({"raw_dir": str(raw)}))

    studies = (
        m.group_by("study_id", maintain_order=True)
        .first()
        .sort("study_id")
        .with_columns(pl.col(list(schema.LABELS)).fill_nan(None))
    )
    flip = rng.random((studies.height, 14)) < 0.05
    nb = studies.select("study_id", *schema.LABELS).with_columns(
        [
            pl.when(pl.Series(flip[:, j])).then(pl.lit(1.0)).otherwise(pl.col(lab)).alias(lab)
            for j, lab in enumerate(schema.LABELS)
        ]
    )
    nb.insert_column(0, studies["subject_id"]).write_csv(raw / f"{schema.NEGBIO_CSV}")
    test = studies.filter(pl.col("split") == "test")
    rad = (
        test.head(687)
        .select("study_id", *schema.LABELS)
        .rename({"Lung Opacity": "Airspace Opacity"})
    )
    rad.write_csv(raw / schema.RADIOLOGIST_CSV)

    for e in ("a", "b"):
        d = root / "reports" / e
        d.mkdir(parents=True)
        p = rng.random((test.height, 14))
        pl.DataFrame(
            {"study_id": test["study_id"]} | {lab: p[:, j] for j, lab in enumerate(schema.LABELS)}
        ).write_csv(d / "predictions_study.csv")
        metrics = {
            "split": "test",
            "level": "study",
            "protocol": {
                "split": "test",
                "level": "study",
                "uncertain": "exclude",
                "labels": "chexpert",
                "views": ["PA"],
            },
            "labels": {lab: {"threshold": 0.5} for lab in schema.LABELS},
            "provenance": {"checkpoint": None},
        }
        (d / "metrics.json").write_text(json.dumps(metrics))

    # Report files and a 256 px cache for the timed studies' images.
    timed = test["study_id"].to_list()[:: max(1, test.height // n_pages)][:n_pages]
    imgs = m.filter(pl.col("study_id").is_in(timed))
    for rel in imgs["report_path"].unique().to_list():
        path = raw / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  Cough.\n\n"
            " FINDINGS:  Heart size is normal.  No pleural effusion.\n\n"
            " IMPRESSION:  No acute cardiopulmonary process.\n"
        )
    cache = root / "interim" / "cache-256"
    cache.mkdir(parents=True)
    images = rng.integers(0, 255, (imgs.height, 256, 256), dtype=np.uint8)
    np.save(cache / "images.npy", images)
    pl.DataFrame(
        {
            "dicom_id": imgs["dicom_id"],
            "row": np.arange(imgs.height),
            "ok": [True] * imgs.height,
            "error": [None] * imgs.height,
        },
        schema_overrides={"error": pl.String},
    ).write_parquet(cache / "index.parquet")
    (cache / "cache.json").write_text(json.dumps({"size": 256, "n": imgs.height}))
    return timed


def timed_ms(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--pages", type=int, default=40)
    args = ap.parse_args()

    from starlette.testclient import TestClient

    from cxr.view.app import create_app
    from cxr.view.data import load_view_data
    from cxr.view.images import Pixels, find_cache

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed = write_root(root, args.studies, args.pages)
        t0 = time.perf_counter()
        data = load_view_data(
            root / "processed" / "manifest.parquet",
            [root / "reports" / "a", root / "reports" / "b"],
            root,
        )
        pixels = Pixels(data, find_cache(root, None, root / "interim" / "cache-256"), root / "h")
        client = TestClient(create_app(data, pixels, TOKEN))
        client.get(f"/?token={TOKEN}")
        load_s = time.perf_counter() - t0
        print(
            f"{data.studies.height} studies, {data.images.height} images, sources "
            f"{data.sources}, 2 evaluations of {len(data.studies.filter(pl.col('p0:Edema').is_not_null()))} "
            f"studies; start-up {load_s:.2f} s"
        )
        queries = {
            "no filter, first page": {},
            "split=test": {"split": "test"},
            "label value Edema=1": {"label": "Edema", "value": "1"},
            "Edema false positives of eval a, by probability": {
                "label": "Edema",
                "eval": "0",
                "outcome": "FP",
                "sort": "prob",
            },
            "sources disagree on Edema": {"label": "Edema", "disagree": "1"},
            "a and b differ on Edema, by error, page 3": {
                "label": "Edema",
                "eval": "0",
                "other": "1",
                "agreement": "differ",
                "sort": "error",
                "page": "3",
            },
            "all filters: test, PA, Edema=0, FP, by error": {
                "split": "test",
                "view": "PA",
                "label": "Edema",
                "value": "0",
                "eval": "0",
                "outcome": "FP",
                "sort": "error",
            },
        }
        print(f"{'request':<50} {'median ms':>10} {'p95 ms':>8}")
        for name, params in queries.items():
            r = client.get("/", params=params)
            assert r.status_code == 200, r.text[:200]
            med, p95 = timed_ms(lambda p=params: client.get("/", params=p), args.repeat)
            print(f"list: {name:<44} {med:>10.1f} {p95:>8.1f}")
        med, p95 = timed_ms(
            lambda: client.get("/export.csv", params={"label": "Edema", "value": "1"}), args.repeat
        )
        print(f"{'export.csv: Edema=1 (all images)':<50} {med:>10.1f} {p95:>8.1f}")

        def page(sid: int) -> None:
            r = client.get(f"/study/{sid}")
            assert r.status_code == 200
            for d in data.images.filter(pl.col("study_id") == sid)["dicom_id"].to_list():
                assert client.get(f"/image/{d}/thumb").status_code == 200

        for sid in timed:  # warm: OS page cache, first-touch costs
            page(sid)
        times = []
        for sid in timed:
            times.append(timed_ms(lambda s=sid: page(s), 3)[0])
        times.sort()
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        print(
            f"{'study page: HTML + every thumbnail (1-3 images)':<50} "
            f"{statistics.median(times):>10.1f} {p95:>8.1f}"
        )
        html_only = [timed_ms(lambda s=sid: client.get(f"/study/{s}"), 3)[0] for sid in timed]
        print(f"{'study page: HTML alone':<50} {statistics.median(html_only):>10.1f}")


if __name__ == "__main__":
    main()

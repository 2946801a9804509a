"""`cxr probe` at the size of the 15k-study subset: 20,000 images, 14 labels, 3 fractions.

The script writes a manifest in the official split's proportions (validate and test as in
MIMIC-CXR's official split, bench_evaluate's shape; the rest train) and an embedding store of
20,000 float16 vectors (with `cxr.pretrained.embeddings.write_store`) whose labels depend on a
latent per study that the embeddings carry, then times, per embedding size:
- `probe()`: reading, joining, and per fraction the 14 labels' C paths and their scoring
  (1,000 patient resamples each);
- `write_probe()`: every fraction's metrics, predictions, figures and report.html, probe.json and
  the label-efficiency page;
and the whole (goal: under 60 s on the project's 2-core box, at D=1024 and D=768).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_probe.py [--dims 1024,768] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import sklearn.linear_model
import sklearn.metrics  # noqa: F401

from cxr.core.progress import set_quiet
from cxr.evaluation.probe import ProbeConfig, probe
from cxr.evaluation.probe_report import summary, table_lines, write_probe
from cxr.mimic.schema import LABELS
from cxr.pretrained.embeddings import write_store

N_IMAGES = 20_000
# (split, images, patients): validate and test as in the official split; train the rest.
SHAPE = (("validate", 2_841, 500), ("test", 5_159, 293), ("train", 12_000, 6_500))
LATENT = 48


def manifest_and_latent(rng: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """Image rows and each image's study latent (n, LATENT)."""
    frames, latents = [], []
    image, study0, subject0 = 0, 50_000_000, 10_000_000
    mixing = rng.normal(0, 1, size=(LATENT, len(LABELS)))
    base = np.linspace(-2.5, -0.3, len(LABELS))
    for split, n_images, n_patients in SHAPE:
        n_studies = int(n_images / 1.58)
        owner = rng.choice(n_patients, size=n_studies, p=_weights(rng, n_patients))
        owner[:n_patients] = np.arange(n_patients)
        z = rng.normal(0, 1, size=(n_studies, LATENT))
        logits = base + 0.35 * z @ mixing + rng.normal(0, 0.5, size=(n_studies, len(LABELS)))
        labels = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float64)
        labels[rng.random(labels.shape) < 0.25] = np.nan
        labels[rng.random(labels.shape) < 0.05] = -1.0
        nf = LABELS.index("No Finding")
        labels[:, nf] = np.where(labels[:, nf] == 1, 1.0, np.nan)
        per_study = np.ones(n_studies, dtype=int)
        per_study[: n_images - n_studies] += 1  # the rest of the images as second images
        study_of = np.repeat(np.arange(n_studies), per_study)[:n_images]
        frame = pl.DataFrame(
            {
                "dicom_id": [
                    f"{image + i:08x}-0000-0000-0000-000000000000" for i in range(n_images)
                ],
                "study_id": study0 + study_of,
                "subject_id": subject0 + owner[study_of],
                "split": [split] * n_images,
                "view_position": ["PA"] * n_images,
                "image_path": [f"files/img{image + i}.jpg" for i in range(n_images)],
                "report_path": [None] * n_images,
            },
            schema_overrides={"report_path": pl.String},
        ).with_columns(
            pl.Series(lab, labels[study_of, j], dtype=pl.Float32) for j, lab in enumerate(LABELS)
        )
        frames.append(frame)
        latents.append(z[study_of])
        image += n_images
        study0 += n_studies
        subject0 += n_patients
    return pl.concat(frames), np.concatenate(latents)


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.gamma(0.8, size=n)
    return w / w.sum()


def write_data(root: Path, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    df, z = manifest_and_latent(rng)
    manifest = root / "processed" / "manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(manifest)
    (manifest.parent / "manifest.json").write_text(json.dumps({}))
    projection = rng.normal(0, 1 / np.sqrt(LATENT), size=(LATENT, dim))
    vectors = (z @ projection + rng.normal(0, 1.0, size=(df.height, dim))).astype(np.float16)
    write_store(
        root / "interim" / f"embed-bench{dim}",
        df.select("dicom_id", "image_path"),
        vectors,
        {"name": f"bench{dim}", "spec": f"synthetic:{dim}"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="1024,768")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    set_quiet(True)
    import cxr.evaluation.probe as probe_module

    scoring = {"s": 0.0}
    original = probe_module.score_predictions

    def timed(*a, **k):  # the scoring share of probe(), the rest is reading and fitting
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            scoring["s"] += time.perf_counter() - t

    probe_module.score_predictions = timed
    fitting: list[float] = []
    fit_labels = probe_module._fit_labels

    def timed_fit(*a, **k):  # each fraction's 14 C paths
        t = time.perf_counter()
        try:
            return fit_labels(*a, **k)
        finally:
            fitting.append(time.perf_counter() - t)

    probe_module._fit_labels = timed_fit
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for dim in (int(d) for d in args.dims.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            write_data(root, dim)
            cfg = ProbeConfig(
                embeddings=f"bench{dim}",
                data_root=root,
                out=Path(tmp) / "out",
                workers=args.workers,
                n_bootstrap=args.bootstrap,
            )
            scoring["s"] = 0.0
            fitting.clear()
            t0 = time.perf_counter()
            result = probe(cfg)
            t1 = time.perf_counter()
            write_probe(result, cfg.out)
            t2 = time.perf_counter()
            s = summary(result)
            print(
                f"D={dim}: probe {t1 - t0:.1f} s (fitting per fraction "
                + ", ".join(f"{f:.1f}" for f in fitting)
                + f" s; scoring {scoring['s']:.1f} s), write {t2 - t1:.1f} s, total {t2 - t0:.1f} s"
            )
            for line in table_lines(s):
                print("   ", line)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

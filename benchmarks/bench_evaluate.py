"""Evaluate's scoring and `cxr compare` at the size of MIMIC-CXR's official test split.

The test split has 3,269 studies from 293 patients (5,159 images) and validate 1,808 studies from
500 patients. This script builds a manifest of that shape with patient-correlated labels, two
models' probabilities, and times, without any model:
- `score_predictions`: units, targets, operating points, every figure with 1,000 patient
  resamples, fingerprints (goal: under 10 s on the project's 2-core box);
- `cxr compare` of the two written evaluations: reading them back, rebuilding the targets from the
  manifest, checking fingerprints, paired bootstrap and DeLong for 14 labels (goal: under 5 s).

    .venv/bin/python benchmarks/bench_evaluate.py [--repeat 3] [--bootstrap 1000]
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
import sklearn.metrics  # noqa: F401  (imported before timing: the figures are of a warm process)

from cxr.evaluation.compare import CompareConfig, compare
from cxr.evaluation.evaluate import EvaluateConfig, score_predictions, write_evaluation
from cxr.evaluation.protocol import Protocol
from cxr.mimic.schema import LABELS

SHAPE = {"validate": (500, 1808), "test": (293, 3269)}  # (patients, studies)


def _split_rows(rng, split: str, first_subject: int, first_study: int) -> pl.DataFrame:
    n_patients, n_studies = SHAPE[split]
    subjects = first_subject + np.arange(n_patients)
    # Uneven patients, as in MIMIC-CXR (a few patients with many studies).
    weights = rng.gamma(0.8, size=n_patients)
    owner = rng.choice(n_patients, size=n_studies, p=weights / weights.sum())
    owner[:n_patients] = np.arange(n_patients)  # every patient has a study
    # A finding persists within a patient: a per-patient propensity per label.
    propensity = rng.normal(0, 1.2, size=(n_patients, len(LABELS)))
    base = np.linspace(-2.5, -0.3, len(LABELS))
    logits = base + propensity[owner] + rng.normal(0, 0.8, size=(n_studies, len(LABELS)))
    labels = (rng.random((n_studies, len(LABELS))) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    labels[rng.random(labels.shape) < 0.25] = np.nan  # blank
    labels[rng.random(labels.shape) < 0.05] = -1.0  # uncertain
    labels[:, LABELS.index("No Finding")] = np.where(
        labels[:, LABELS.index("No Finding")] == 1, 1.0, np.nan
    )
    n_images = 1 + (rng.random(n_studies) < 0.58)
    rows = []
    image = 0
    for s in range(n_studies):
        for _ in range(n_images[s]):
            rows.append(
                (
                    f"{image:08x}-{first_study:08x}-00000000-00000000-00000000",
                    first_study + s,
                    int(subjects[owner[s]]),
                    split,
                    "PA",
                    *labels[s],
                )
            )
            image += 1
    cols = ["dicom_id", "study_id", "subject_id", "split", "view_position", *LABELS]
    return pl.DataFrame(rows, schema=cols, orient="row")


def _probabilities(rng, rows: pl.DataFrame, strength: float) -> np.ndarray:
    truth = np.nan_to_num(rows.select(LABELS).to_numpy(), nan=0.0).clip(0, 1)
    return 1 / (1 + np.exp(-(strength * (truth - 0.5) * 2 + rng.normal(0, 1, truth.shape))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = {
        "validate": _split_rows(rng, "validate", 10_000_000, 50_000_000),
        "test": _split_rows(rng, "test", 11_000_000, 55_000_000),
    }
    test = rows["test"]
    print(
        f"test split: {test['study_id'].n_unique()} studies, {test['subject_id'].n_unique()} "
        f"patients, {test.height} images; {len(LABELS)} labels; {args.bootstrap} patient resamples"
    )
    work = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    manifest = work / "manifest.parquet"
    pl.concat([rows["validate"], test]).with_columns(
        pl.col(list(LABELS)).cast(pl.Float32),
        pl.format("files/p{}/s{}/{}.jpg", "subject_id", "study_id", "dicom_id").alias("image_path"),
        pl.lit(None, dtype=pl.String).alias("report_path"),
        pl.lit(3056).alias("rows"),
        pl.lit(2544).alias("columns"),
    ).write_parquet(manifest)
    cfg = EvaluateConfig(checkpoint=Path("model.pt"), split="test", n_bootstrap=args.bootstrap)
    protocol = Protocol(split="test", views=("PA",))
    provenance = {"manifest": str(manifest), "synthetic_demo": True}

    times, dirs = [], []
    for k, strength in enumerate((0.7, 0.6)):
        predicted = {
            split: (frame, 0, _probabilities(rng, frame, strength)) for split, frame in rows.items()
        }
        for _ in range(args.repeat if k == 0 else 1):
            t0 = time.perf_counter()
            evaluation = score_predictions(
                cfg, protocol, list(LABELS), predicted, None, provenance, {}
            )
            if k == 0:
                times.append(time.perf_counter() - t0)
        out = work / f"model{k}"
        write_evaluation(evaluation, out)
        dirs.append(out)
    macro = evaluation.metrics["macro"]
    print(
        f"score_predictions: median {statistics.median(times):.2f} s over {args.repeat} runs "
        f"(min {min(times):.2f}); macro AUROC {macro['auroc']:.3f} "
        f"[{macro['auroc_ci'][0]:.3f}, {macro['auroc_ci'][1]:.3f}]"
    )

    ctimes = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = compare(
            CompareConfig(dirs=tuple(dirs), manifest=manifest, n_bootstrap=args.bootstrap)
        )
        ctimes.append(time.perf_counter() - t0)
    print(
        f"compare: median {statistics.median(ctimes):.2f} s over {args.repeat} runs "
        f"(min {min(ctimes):.2f}); macro delta {result['macro']['delta_auroc']:+.3f} "
        f"{json.dumps(result['macro']['delta_ci'])}"
    )


if __name__ == "__main__":
    main()

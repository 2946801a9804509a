"""A small demo-like data root for the `cxr view` tests, built by the project's own commands:
`cxr demo` (reports, radiologist file), `cxr manifest`, `cxr preprocess`, a random-weight
checkpoint, and `cxr evaluate --split test`, plus a NegBio CSV derived from the chexpert one with
some cells changed, so every label source and the disagreement filter are exercised.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from _eval_fixtures import make_checkpoint
from cxr.cli import main
from cxr.mimic import schema
from cxr.mimic.demo import write_demo

SIZE = 64


@dataclass
class ViewFixture:
    root: Path  # the data root (raw/, processed/, interim/)
    raw: Path
    manifest: Path
    eval_dir: Path
    eval_dir_b: Path
    checkpoint: Path
    subject_ids: list[int]


def _write_negbio(raw: Path, seed: int = 3) -> None:
    chexpert = pl.read_csv(raw / f"{schema.CHEXPERT_CSV}.gz", infer_schema=False)
    rng = np.random.default_rng(seed)
    flip = rng.random((chexpert.height, len(schema.LABELS))) < 0.05
    cols = []
    for j, lab in enumerate(schema.LABELS):
        changed = pl.Series(flip[:, j])
        new = pl.when(pl.col(lab).is_null()).then(pl.lit("1.0")).otherwise(pl.lit(None))
        if lab == schema.NO_FINDING:
            changed = pl.Series(np.zeros(chexpert.height, dtype=bool))
        cols.append(pl.when(pl.lit(changed)).then(new).otherwise(pl.col(lab)).alias(lab))
    out = chexpert.with_columns(cols)
    with gzip.open(raw / f"{schema.NEGBIO_CSV}.gz", "wb") as f:
        out.write_csv(f)


def make_view_data(base: Path, n_patients: int = 24) -> ViewFixture:
    root = base / "data"
    raw = root / "raw"
    write_demo(raw, n_patients=n_patients, seed=0, image_size=96, progress=False)
    _write_negbio(raw)
    manifest = root / "processed" / "manifest.parquet"
    quiet = ["--data-dir", str(root), "--quiet"]
    assert main([*quiet, "manifest", "--raw", str(raw), "--out", str(manifest)]) == 0
    assert main([*quiet, "preprocess", "--size", str(SIZE), "--workers", "1"]) == 0
    ckpt = make_checkpoint(base / "models" / "v1" / "best.pt", image_size=SIZE)
    ckpt_b = make_checkpoint(base / "models" / "v2" / "best.pt", image_size=SIZE, seed=1)
    outs = []
    for name, c in (("v1", ckpt), ("v2", ckpt_b)):
        out = base / "reports" / name
        args = ["--checkpoint", str(c), "--split", "test", "--out", str(out)]
        assert main([*quiet, "evaluate", *args, "--bootstrap", "0", "--device", "cpu"]) == 0
        outs.append(out)
    subjects = pl.read_parquet(manifest)["subject_id"].unique().to_list()
    return ViewFixture(root, raw, manifest, outs[0], outs[1], ckpt, subjects)

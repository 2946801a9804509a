"""The tables behind `cxr view`, built once at start-up (pure polars, no torch).

`studies` has one row per study of the manifest, sorted by study_id, and every column a filter or
a sort reads, so a request only filters, sorts and slices an in-memory frame:

- `study_id`, `split`, `views` (the study's view positions, a list), `n_images`;
- `chexpert:<Label>` (the manifest's values), `negbio:<Label>` when the raw root has the NegBio
  CSV, `radiologist:<Label>` when it has the 2.1.0 radiologist file (raw values 1/0/-1/NaN), with
  `has:negbio` / `has:radiologist` saying which studies the file covers;
- `disagree:<Label>` and `disagree:any`: the sources covering the study give different values,
  blank counted as 0 (blank is negative under the evaluation protocol) and -1 kept apart;
- per evaluation k: `p<k>:<Label>` (the study's probability, null outside the evaluated rows),
  `y<k>:<Label>` (its target under that evaluation's protocol, NaN where excluded) and
  `o<k>:<Label>` (TP, FP, FN or TN at the evaluation's Youden threshold; null without a target).

`subject_id` is dropped as the manifest is read: nothing here holds it. Image files are reached
through `image_path`, kept in a dict keyed by dicom_id and never shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxr.core.errors import InputError
from cxr.evaluation.protocol import Protocol
from cxr.mimic import schema

SOURCES = ("chexpert", "negbio", "radiologist")
SOURCE_NAMES = {"chexpert": "CheXpert", "negbio": "NegBio", "radiologist": "Radiologist"}
OUTCOMES = ("TP", "FP", "FN", "TN")


@dataclass
class EvalInfo:
    """One loaded evaluation directory."""

    index: int
    name: str
    directory: Path
    labels: list[str]
    thresholds: dict[str, float | None]
    protocol: Protocol
    checkpoint: Path | None
    checkpoint_sha256: str | None

    def describe(self) -> str:
        return self.protocol.describe()


@dataclass
class ViewData:
    studies: pl.DataFrame
    images: pl.DataFrame  # dicom_id, study_id, view_position (sorted by study_id, dicom_id)
    labels: list[str]
    sources: list[str]
    evals: list[EvalInfo]
    raw_dir: Path
    image_paths: dict[str, str] = field(repr=False)  # dicom_id -> path under raw_dir
    report_paths: dict[int, str] = field(repr=False)  # study_id -> path under raw_dir
    sections: dict[int, dict[str, str]] = field(repr=False)  # the manifest's report sections
    views: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- label sources


def read_negbio(raw_dir: Path) -> pl.DataFrame | None:
    """The NegBio labels at the raw root (same layout as the chexpert CSV), or None when absent.

    Checked like the chexpert file (columns, values); a bad file is one line naming it.
    """
    from cxr.mimic.tables import (
        LINE,
        check_columns,
        check_labels,
        check_unique,
        locate_csv,
        read_csv_text,
    )

    path = locate_csv(raw_dir, schema.NEGBIO_CSV)
    if path is None:
        return None
    df = read_csv_text(path)
    name = str(path)
    problems = check_columns(df, ("study_id", *schema.LABELS), name)
    problems = problems or check_labels(df, name) + check_unique(df, ["study_id"], name)
    if problems:
        raise InputError(str(problems[0]))
    bad = df.filter(~pl.col("study_id").str.contains(schema.STUDY_ID_RE.pattern))
    if bad.height:
        raise InputError(f"{name}: line {bad[LINE][0]}: column 'study_id': malformed study_id")
    return df.select(
        pl.col("study_id").cast(pl.Int64),
        *[pl.col(lab).cast(pl.Float32) for lab in schema.LABELS],
    )


def _source_columns(
    studies: pl.DataFrame, table: pl.DataFrame, source: str, labels: list[str]
) -> pl.DataFrame:
    """`studies` with `<source>:<Label>` columns and `has:<source>` from a study-level table."""
    have = [lab for lab in labels if lab in table.columns]
    renamed = table.select(
        "study_id",
        *[pl.col(lab).cast(pl.Float32).alias(f"{source}:{lab}") for lab in have],
    ).with_columns(pl.lit(True).alias(f"has:{source}"))
    out = studies.join(renamed, on="study_id", how="left")
    missing = [
        pl.lit(None, dtype=pl.Float32).alias(f"{source}:{lab}") for lab in labels if lab not in have
    ]
    return out.with_columns(*missing, pl.col(f"has:{source}").fill_null(False))


def _disagreement(studies: pl.DataFrame, sources: list[str], labels: list[str]) -> pl.DataFrame:
    """`disagree:<Label>` and `disagree:any`: the covering sources' values differ (blank as 0)."""
    exprs = []
    for lab in labels:
        values = [
            pl.when(pl.col(f"has:{s}")).then(pl.col(f"{s}:{lab}").fill_nan(None).fill_null(0.0))
            for s in sources
        ]
        if len(values) < 2:
            exprs.append(pl.lit(False).alias(f"disagree:{lab}"))
            continue
        lo = pl.min_horizontal(values)
        hi = pl.max_horizontal(values)
        exprs.append((hi > lo).fill_null(False).alias(f"disagree:{lab}"))
    out = studies.with_columns(exprs)
    return out.with_columns(
        pl.any_horizontal([pl.col(f"disagree:{lab}") for lab in labels]).alias("disagree:any")
    )


# --------------------------------------------------------------------------- evaluations


def _eval_columns(
    studies: pl.DataFrame,
    k: int,
    directory: Path,
    evaluation,
    radiologist: pl.DataFrame | None,
) -> tuple[pl.DataFrame, EvalInfo]:
    """Probabilities, targets and outcomes of evaluation k as columns of `studies`."""
    from cxr.evaluation.targets import targets

    metrics, labels = evaluation.metrics, evaluation.labels
    protocol = evaluation.protocol
    units = evaluation.units
    if "dicom_id" in units.columns:  # image level: a study's probability is its images' mean
        units = units.group_by("study_id").agg(pl.col(labels).mean()).sort("study_id")
    probs = units.select(
        "study_id", *[pl.col(lab).cast(pl.Float64).alias(f"p{k}:{lab}") for lab in labels]
    )
    out = studies.join(probs, on="study_id", how="left")
    evaluated = out.filter(pl.col(f"p{k}:{labels[0]}").is_not_null())
    if protocol.labels == "radiologist" and radiologist is None:
        raise InputError(
            f"{directory}: evaluated against radiologist labels, but "
            f"{schema.RADIOLOGIST_CSV} is not at the raw root"
        )
    units_raw = evaluated.select(
        "study_id", *[pl.col(f"chexpert:{lab}").alias(lab) for lab in labels]
    )
    y, _ = targets(units_raw, labels, protocol, radiologist)
    ys = pl.DataFrame(
        {"study_id": evaluated["study_id"]}
        | {f"y{k}:{lab}": y[:, j].astype(np.float64) for j, lab in enumerate(labels)}
    )
    out = out.join(ys, on="study_id", how="left")
    thresholds: dict[str, float | None] = {}
    exprs = []
    for lab in labels:
        t = (metrics.get("labels", {}).get(lab) or {}).get("threshold")
        thresholds[lab] = None if t is None else float(t)
        p, yy = pl.col(f"p{k}:{lab}"), pl.col(f"y{k}:{lab}").fill_nan(None)
        if t is None:
            exprs.append(pl.lit(None, dtype=pl.String).alias(f"o{k}:{lab}"))
            continue
        pos = p >= t
        exprs.append(
            pl.when(yy.is_null() | p.is_null())
            .then(None)
            .when(pos & (yy == 1))
            .then(pl.lit("TP"))
            .when(pos & (yy == 0))
            .then(pl.lit("FP"))
            .when(~pos & (yy == 1))
            .then(pl.lit("FN"))
            .otherwise(pl.lit("TN"))
            .alias(f"o{k}:{lab}")
        )
    out = out.with_columns(exprs)
    prov = metrics.get("provenance") or {}
    ckpt = prov.get("checkpoint")
    info = EvalInfo(
        index=k,
        name=Path(directory).resolve().name,
        directory=Path(directory),
        labels=list(labels),
        thresholds=thresholds,
        protocol=protocol,
        checkpoint=Path(ckpt) if ckpt else None,
        checkpoint_sha256=prov.get("checkpoint_sha256"),
    )
    return out, info


# --------------------------------------------------------------------------- loading


def _raw_dir(manifest_path: Path, raw: Path | None, data_root: Path) -> Path:
    from cxr.core.paths import DataPaths
    from cxr.mimic.manifest import read_manifest_info

    if raw is not None:
        return Path(raw)
    recorded = read_manifest_info(manifest_path).get("raw_dir")
    return Path(recorded) if recorded and Path(recorded).is_dir() else DataPaths(data_root).raw


def build_view_data(
    manifest: pl.DataFrame,
    raw_dir: Path,
    evaluations: list[tuple[Path, Any]] | None = None,
    negbio: pl.DataFrame | None = None,
    radiologist: pl.DataFrame | None = None,
) -> ViewData:
    """ViewData from a manifest frame, its raw root, read evaluations and optional label tables.

    `evaluations` are (directory, `cxr.evaluation.evaluate.Evaluation`) pairs.
    """
    labels = [lab for lab in schema.LABELS if lab in manifest.columns]
    m = manifest.drop("subject_id", strict=False).sort("study_id", "dicom_id")
    images = m.select("dicom_id", "study_id", "view_position")
    image_paths = dict(zip(m["dicom_id"].to_list(), m["image_path"].to_list(), strict=True))
    first = m.group_by("study_id", maintain_order=True).first()
    report_paths = {
        int(s): str(r)
        for s, r in zip(first["study_id"].to_list(), first["report_path"].to_list(), strict=True)
        if r
    }
    section_cols = [
        c for c in ("indication", "comparison", "findings", "impression") if c in m.columns
    ]
    sections = {
        int(row["study_id"]): {c: row[c] for c in section_cols if row[c]}
        for row in first.select("study_id", *section_cols).iter_rows(named=True)
    }
    per_study = m.group_by("study_id", maintain_order=True).agg(
        pl.col("split").first(),
        pl.col("view_position").drop_nulls().unique().sort().alias("views"),
        pl.len().alias("n_images"),
        *[pl.col(lab).first().cast(pl.Float32).alias(f"chexpert:{lab}") for lab in labels],
    )
    studies = per_study.with_columns(pl.lit(True).alias("has:chexpert"))
    sources = ["chexpert"]
    if negbio is not None:
        studies = _source_columns(studies, negbio, "negbio", labels)
        sources.append("negbio")
    if radiologist is not None:
        studies = _source_columns(studies, radiologist, "radiologist", labels)
        sources.append("radiologist")
    studies = _disagreement(studies, sources, labels)
    evals = []
    for k, (directory, evaluation) in enumerate(evaluations or []):
        studies, info = _eval_columns(studies, k, directory, evaluation, radiologist)
        evals.append(info)
    views = sorted(images["view_position"].drop_nulls().unique().to_list())
    return ViewData(
        studies=studies.sort("study_id").rechunk(),
        images=images,
        labels=labels,
        sources=sources,
        evals=evals,
        raw_dir=raw_dir,
        image_paths=image_paths,
        report_paths=report_paths,
        sections=sections,
        views=views,
    )


def load_view_data(
    manifest_path: Path,
    eval_dirs: list[Path],
    data_root: Path,
    raw: Path | None = None,
) -> ViewData:
    """Read the manifest, the label files at its raw root and the evaluation directories."""
    from cxr.evaluation.evaluate import read_evaluation
    from cxr.mimic.manifest import read_manifest
    from cxr.mimic.radiologist import find_radiologist_csv, read_radiologist_labels

    manifest = read_manifest(manifest_path)
    raw_dir = _raw_dir(manifest_path, raw, data_root)
    rad_path = find_radiologist_csv(raw_dir)
    radiologist = read_radiologist_labels(rad_path).table if rad_path else None
    negbio = read_negbio(raw_dir)
    evaluations = []
    for d in eval_dirs:
        ev = read_evaluation(d)
        unknown = ev.units.join(manifest.select("study_id").unique(), on="study_id", how="anti")
        if unknown.height:
            raise InputError(
                f"{d}: {unknown.height} evaluated studies are not in {manifest_path} "
                f"(e.g. {unknown['study_id'][0]}); pass the manifest it was evaluated on"
            )
        evaluations.append((Path(d), ev))
    return build_view_data(manifest, raw_dir, evaluations, negbio, radiologist)

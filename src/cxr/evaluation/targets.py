"""The evaluated units of a split and their targets under a protocol (pure table logic).

A unit is a study (its images' mean probability is scored against the study's labels: MIMIC-CXR
labels are per study) or an image. Each unit keeps its patient, in memory only, so intervals can
resample patients; nothing here writes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from cxr.core.errors import InputError, MissingInput
from cxr.evaluation.protocol import Protocol
from cxr.mimic import schema
from cxr.stats.metrics import eval_targets


def unit_keys(level: str) -> list[str]:
    return ["study_id"] if level == "study" else ["study_id", "dicom_id"]


def _negbio_columns(rows: pl.DataFrame, labels: Sequence[str]) -> list[str]:
    wanted = [schema.NEGBIO_LABELLED, *(schema.label_column(lab, "negbio") for lab in labels)]
    return [c for c in wanted if c in rows.columns]


def unit_rows(rows: pl.DataFrame, labels: Sequence[str], level: str) -> pl.DataFrame:
    """One row per unit, sorted by its keys: the keys, `subject_id` and the raw label columns
    (the NegBio ones too when the manifest has them).

    `rows` are manifest image rows (every image of a study carries the study's labels).
    """
    keys = unit_keys(level)
    cols = [*keys, "subject_id", *labels, *_negbio_columns(rows, labels)]
    if level == "image":
        return rows.select(cols).sort(keys)
    return rows.group_by("study_id", maintain_order=True).first().select(cols).sort("study_id")


def targets(
    units: pl.DataFrame,
    labels: Sequence[str],
    protocol: Protocol,
    radiologist: pl.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(y (n, L) targets with NaN where excluded, covered (n,) bool) for the units.

    CheXpert: every unit is covered. NegBio: the manifest's NegBio columns; units of studies
    without a NegBio row are not covered. Radiologist: `radiologist` is the radiologists' table
    (`study_id` and the label columns it has); units of studies it lacks are not covered, and a
    label it lacks is excluded for every unit.
    """
    if protocol.labels == "chexpert":
        raw = units.select(labels).to_numpy().astype(np.float64)
        return eval_targets(raw, protocol.uncertain), np.ones(units.height, dtype=bool)
    if protocol.labels == "negbio":
        require_negbio(units, labels)
        cols = [schema.label_column(lab, "negbio") for lab in labels]
        y = eval_targets(units.select(cols).to_numpy().astype(np.float64), protocol.uncertain)
        covered = units[schema.NEGBIO_LABELLED].fill_null(False).to_numpy().astype(bool)
        y[~covered] = np.nan
        return y, covered
    if radiologist is None:
        raise ValueError("the radiologist protocol needs the radiologists' table")
    from cxr.mimic.radiologist import radiologist_targets

    # Blank and "study not in the file" are both NaN in the raw values: coverage tells them apart.
    covered = np.isin(units["study_id"].to_numpy(), radiologist["study_id"].to_numpy())
    y = eval_targets(radiologist_targets(units, radiologist, labels), protocol.uncertain)
    y[~covered] = np.nan
    for j, lab in enumerate(labels):
        if lab not in radiologist.columns:
            y[:, j] = np.nan
    return y, covered


def require_negbio(rows: pl.DataFrame, labels: Sequence[str], where: str = "the manifest") -> None:
    """One line when the manifest carries no NegBio labels (it was built without the file)."""
    missing = [
        c
        for c in (schema.NEGBIO_LABELLED, *(schema.label_column(lab, "negbio") for lab in labels))
        if c not in rows.columns
    ]
    if missing:
        raise InputError(
            f"{where} has no NegBio labels (column '{missing[0]}'): put "
            f"{schema.NEGBIO_CSV}.gz at the raw root and rebuild it with `cxr manifest`"
        )


def load_radiologist_table(raw_dir: Path) -> pl.DataFrame:
    """The radiologists' labels found at the raw root, under CheXpert label names."""
    from cxr.mimic.radiologist import find_radiologist_csv, read_radiologist_labels

    path = find_radiologist_csv(raw_dir)
    if path is None:
        from cxr.mimic.schema import RADIOLOGIST_CSV

        raise MissingInput(
            raw_dir / RADIOLOGIST_CSV,
            "radiologist labels",
            "`cxr download metadata --version 2.1.0` fetches them (MIMIC-CXR-JPG 2.1.0)",
        )
    return read_radiologist_labels(path).table


def raw_dir_of(manifest_path: Path, data_root: Path) -> Path:
    """The raw tree a manifest was built from (manifest.json's raw_dir when it still exists),
    else the data root's raw/: where the image files and label CSVs of its rows are."""
    from cxr.core.paths import DataPaths
    from cxr.mimic.manifest import read_manifest_info

    raw = read_manifest_info(manifest_path).get("raw_dir")
    return Path(raw) if raw and Path(raw).is_dir() else DataPaths(data_root).raw

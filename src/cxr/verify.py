"""`cxr verify`: the data guide's step-4 check, schema checks, and (with a manifest) file checks.

1. Each required CSV (as `.csv` or `.csv.gz`) and `files/`: present or missing.
2. Schema checks on the CSVs that are present (`cxr.mimic.tables`): one line per problem naming file,
   column and line.
3. With a manifest: every selected image and every selected study's report exists; with `deep`,
   every image decodes (through `cxr.imaging.images.load_xray`, the reader every command uses).
Nothing printed here contains a subject_id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cxr.core.errors import RAW_MAKERS, InputError, MissingInput
from cxr.mimic import schema
from cxr.mimic.tables import KINDS, Problem, check_all, locate_csv, read_csv_text


@dataclass
class VerifyReport:
    present: dict[str, bool] = field(default_factory=dict)  # name -> present
    studies_with_labels: int | None = None
    problems: list[Problem] = field(default_factory=list)
    checked_images: int = 0
    checked_reports: int = 0
    decoded_images: int = 0

    @property
    def ok(self) -> bool:
        return all(self.present.values()) and not self.problems


def check_presence(raw: Path, report: VerifyReport) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for kind, name in KINDS.items():
        path = locate_csv(raw, name)
        report.present[path.name if path else f"{name}[.gz]"] = path is not None
        if path is not None:
            found[kind] = path
    report.present[f"{schema.FILES_DIR}/"] = (raw / schema.FILES_DIR).is_dir()
    return found


def check_tables(found: dict[str, Path], report: VerifyReport) -> None:
    frames: dict[str, pl.DataFrame] = {}
    for kind, path in found.items():
        try:
            frames[kind] = read_csv_text(path)
        except InputError as exc:
            report.problems.append(Problem(str(path), str(exc).split(": ", 1)[-1]))
    report.problems += check_all(frames, {k: str(p) for k, p in found.items()})
    chexpert = frames.get("chexpert")
    if chexpert is not None and "study_id" in chexpert.columns:
        report.studies_with_labels = chexpert["study_id"].n_unique()


def check_manifest_files(
    raw: Path, manifest: pl.DataFrame, report: VerifyReport
) -> list[tuple[str, Path]]:
    """Every selected image and report exists; returns (dicom_id, path) of the images that do.

    Problems name images by dicom_id and studies by study_id: a path would show the subject_id.
    """
    existing = []
    missing: list[str] = []
    for dicom_id, rel in manifest.select("dicom_id", "image_path").iter_rows():
        path = raw / rel
        if path.is_file():
            existing.append((dicom_id, path))
        else:
            missing.append(dicom_id)
    report.checked_images = manifest.height
    if missing:
        report.problems.append(
            Problem(f"image {missing[0]}", "selected image is missing", more=len(missing) - 1)
        )
    studies = manifest.select("subject_id", "study_id").unique().sort("study_id")
    missing_studies = [
        study_id
        for subject_id, study_id in studies.iter_rows()
        if not any((raw / rel).is_file() for rel in schema.report_relpaths(subject_id, study_id))
    ]
    report.checked_reports = studies.height
    if missing_studies:
        report.problems.append(
            Problem(
                f"report of study {missing_studies[0]}",
                "missing (looked in both places)",
                more=len(missing_studies) - 1,
            )
        )
    return existing


def _decode(path: str) -> str | None:
    """None when the image decodes, else the reason (without the path, which names the patient)."""
    from cxr.imaging.images import ImageReadError, load_xray

    try:
        load_xray(path, max_side=256)
    except ImageReadError as exc:
        return exc.reason
    return None


def check_decode(
    images: Iterable[tuple[str, Path]], report: VerifyReport, workers: int | None = None
) -> None:
    """Decode every image. At reduced scale the entropy decoding, where corruption shows, is whole."""
    from concurrent.futures import ProcessPoolExecutor

    from cxr.core.progress import track

    images = list(images)
    failures: list[tuple[str, str]] = []
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_decode, [str(p) for _, p in images], chunksize=16)
        for (dicom_id, _), reason in zip(
            images, track(results, "decoding", total=len(images)), strict=True
        ):
            if reason is not None:
                failures.append((dicom_id, reason))
    report.decoded_images = len(images) - len(failures)
    if failures:
        dicom_id, reason = failures[0]
        report.problems.append(
            Problem(f"image {dicom_id}", f"does not decode: {reason}", more=len(failures) - 1)
        )


def verify(raw: Path, manifest_path: Path | None = None, deep: bool = False) -> VerifyReport:
    raw = Path(raw)
    if not raw.is_dir():
        raise MissingInput(raw, "raw data directory", RAW_MAKERS)
    if not os.access(raw, os.R_OK | os.X_OK):
        raise InputError(f"{raw}: directory is not readable")
    report = VerifyReport()
    found = check_presence(raw, report)
    check_tables(found, report)
    if manifest_path is not None:
        from cxr.mimic.manifest import read_manifest

        manifest = read_manifest(manifest_path)
        existing = check_manifest_files(raw, manifest, report)
        if deep:
            check_decode(existing, report)
    elif deep:
        raise InputError("--deep needs --manifest: it decodes the selected images")
    return report

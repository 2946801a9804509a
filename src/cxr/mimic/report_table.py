"""The reports table: every report under `files/` sectioned once, shared by `cxr reports` and
`cxr manifest`.

`report_table(raw, path)` returns the table stored at `path` (`reports.parquet`) when it is fresh,
else sections every report under `raw/files` (`section_reports`) and stores it there. Fresh means
its sidecar (`reports.json`) names the same raw root, the same cxr version and table format, the
table's own SHA-256, and the same fingerprint of the report files: a hash of every report's path,
size and modification time, so adding, removing or editing a report makes the table stale. The
manifest takes its report sections from that table (`manifest_report_columns`), so a report is
parsed once whichever command runs first.

The table has `study_id`, one column per section of `reports.SECTIONS`, `other` (unmapped headers
as `name: text`) and `labeler_text`; no subject_id and no path (a path names the patient). The
sidecar holds no path under `files/` either, only their hash.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cxr import __version__
from cxr.core.atomic import atomic_path, output_errors, write_text_atomic
from cxr.core.errors import InputError, MissingInput
from cxr.core.hashing import file_sha256
from cxr.mimic.reports import SECTIONS, labeler_text, report_columns, report_files, section_files
from cxr.mimic.schema import FILES_DIR

REPORTS_TABLE = "reports.parquet"  # beside the manifest, and `cxr reports`' default output
OTHER = "other"
LABELER_TEXT = "labeler_text"
TABLE_COLUMNS: tuple[str, ...] = ("study_id", *SECTIONS, OTHER, LABELER_TEXT)
# The official `mimic_cxr_sectioned.csv` (MIT-LCP/mimic-cxr txt/create_section_files.py) columns.
SECTIONED_CSV_COLUMNS = ("study", "impression", "findings", "last_paragraph", "comparison")
# Bumped whenever the table's columns or meaning change, so an older table is rebuilt.
TABLE_FORMAT = 1

# Counts of what was odd, in the order `cxr reports` prints them.
ODDITIES = (
    "non_utf8_files",
    "replaced_chars",
    "empty",
    "no_header",
    "crlf",
    "glued_header",
    "long",
    "no_findings_or_impression",
    "with_addendum",
    "unreadable",
)


@dataclass(frozen=True)
class ReportScan:
    """The report files under `files/`: one per study, and a fingerprint of all of them."""

    chosen: dict[int, str]  # study_id -> relpath from the raw root (MIMIC-CXR's place wins)
    duplicates: int  # studies with a report in both places
    fingerprint: str  # SHA-256 over every report's relpath, size and mtime


@dataclass
class ReportTable:
    table: pl.DataFrame
    summary: dict[str, Any]  # counts for the printed summary (also kept in the sidecar)
    reused: bool = False  # read back from a fresh table instead of sectioned now


def scan_reports(raw: str | os.PathLike[str]) -> ReportScan:
    """Every report under `raw/files` in either place (one directory walk, one stat per file)."""
    digest = hashlib.sha256()
    chosen: dict[int, tuple[str, str]] = {}
    duplicates = 0
    for study_id, rel, place, st in report_files(Path(raw) / FILES_DIR):
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if study_id in chosen:
            duplicates += 1
            if place == "official" and chosen[study_id][1] != "official":
                chosen[study_id] = (rel, place)
        else:
            chosen[study_id] = (rel, place)
    return ReportScan(
        {study: rel for study, (rel, _) in sorted(chosen.items())},
        duplicates,
        digest.hexdigest(),
    )


def section_reports(
    raw: str | os.PathLike[str],
    scan: ReportScan,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReportTable:
    """Section every report of `scan` into the table (in `workers` processes), with the counts of
    what was odd. The one place where a tree of reports is parsed."""
    study_ids = list(scan.chosen)
    relpaths = [scan.chosen[s] for s in study_ids]
    results = section_files(raw, relpaths, workers=workers, on_progress=on_progress)

    counts: Counter[str] = Counter()
    known = set(SECTIONS)
    columns: dict[str, list[str | None]] = {name: [] for name in TABLE_COLUMNS[1:]}
    other_names: Counter[str] = Counter()
    for res in results:
        sections = res["sections"]
        if res.get("error"):
            counts["unreadable"] += 1
        if res["replaced"]:
            counts["non_utf8_files"] += 1
            counts["replaced_chars"] += res["replaced"]
        for flag in ("empty", "no_header", "crlf", "glued_header", "long"):
            if res.get(flag):
                counts[flag] += 1
        if "findings" not in sections and "impression" not in sections:
            counts["no_findings_or_impression"] += 1
        if "addendum" in sections:
            counts["with_addendum"] += 1
        for name in SECTIONS:
            columns[name].append(sections.get(name))
        others = [(k, v) for k, v in sections.items() if k not in known]
        other_names.update(k for k, _ in others)
        columns[OTHER].append("\n".join(f"{k}: {v}" for k, v in others) or None)
        columns[LABELER_TEXT].append(labeler_text(sections))

    table = pl.DataFrame(
        {"study_id": study_ids, **columns},
        schema={"study_id": pl.Int64, **{c: pl.Utf8 for c in columns}},
    )
    summary = {
        "reports": len(relpaths),
        "duplicates": scan.duplicates,
        "with_findings": int(table["findings"].is_not_null().sum()),
        "with_impression": int(table["impression"].is_not_null().sum()),
        "empty_labeler_text": int((table[LABELER_TEXT] == "").sum()),
        "other_headers": other_names.most_common(5),
        **{k: counts.get(k, 0) for k in ODDITIES},
    }
    return ReportTable(table, summary)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """`reports.parquet` -> `reports.json`."""
    return Path(path).with_suffix(".json")


def _sidecar(raw: Path, scan: ReportScan, table_sha256: str, summary: dict[str, Any]) -> dict:
    return {
        "format": TABLE_FORMAT,
        "cxr_version": __version__,
        "raw_dir": str(raw.resolve()),
        "files_fingerprint": scan.fingerprint,
        "table_sha256": table_sha256,
        "summary": summary,
    }


def write_report_table(
    result: ReportTable, path: str | os.PathLike[str], raw: str | os.PathLike[str], scan: ReportScan
) -> None:
    """The table, then its sidecar, each atomically: a sidecar always describes a whole table,
    and one left from an earlier table no longer matches its SHA-256."""
    with output_errors(path), atomic_path(path) as tmp:
        result.table.write_parquet(tmp)
        digest = file_sha256(tmp)
    meta = _sidecar(Path(raw), scan, digest, result.summary)
    with output_errors(sidecar_path(path)):
        write_text_atomic(sidecar_path(path), json.dumps(meta, indent=2) + "\n")


def load_report_table(
    path: str | os.PathLike[str], raw: str | os.PathLike[str], scan: ReportScan
) -> ReportTable | None:
    """The table at `path` when it is fresh for the files of `scan` under `raw`, else None."""
    path = Path(path)
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            return None
        expected = _sidecar(Path(raw), scan, meta.get("table_sha256", ""), meta.get("summary"))
        if meta != expected or file_sha256(path) != meta["table_sha256"]:
            return None
        table = pl.read_parquet(path)
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):
        return None
    if table.columns != list(TABLE_COLUMNS) or table.height != len(scan.chosen):
        return None
    return ReportTable(table, meta["summary"], reused=True)


def report_table(
    raw: str | os.PathLike[str],
    path: str | os.PathLike[str],
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    scan: ReportScan | None = None,
) -> ReportTable:
    """The reports table of `raw`: read back from `path` when fresh, else sectioned and written
    there. One-line InputError when there is no `files/` or no report in it."""
    raw = Path(raw)
    files_dir = raw / FILES_DIR
    if Path(path).suffix == ".json":
        raise InputError(f"{path}: the reports table must not end in .json (its sidecar does)")
    if not files_dir.is_dir():
        raise MissingInput(
            files_dir,
            "files/ folder of the raw root",
            "`cxr download subset` fetches the manifest's images and reports into it, "
            "`cxr demo` writes a synthetic tree",
        )
    scan = scan if scan is not None else scan_reports(raw)
    if not scan.chosen:
        raise MissingInput(
            files_dir,
            "report files (sXXXXXXXX.txt)",
            "`cxr download subset` fetches the reports of the manifest's studies",
        )
    fresh = load_report_table(path, raw, scan)
    if fresh is not None:
        return fresh
    result = section_reports(raw, scan, workers=workers, on_progress=on_progress)
    write_report_table(result, path, raw, scan)
    return result


def manifest_report_columns(
    raw: str | os.PathLike[str],
    studies: pl.DataFrame,
    table_path: str | os.PathLike[str] | None,
    workers: int | None = None,
) -> pl.DataFrame:
    """`reports.report_columns` for the manifest's studies, with the sections taken from the
    reports table at `table_path` (reused when fresh, else built and written there).

    A study's row is taken only when the table holds that very file (a study whose report sits
    under another patient folder too is parsed on its own). Without `table_path`, or with no
    report under `files/` yet, the studies' own reports are parsed and nothing is written.
    """
    if table_path is None:
        return report_columns(raw, studies, workers)
    scan = scan_reports(raw)
    if not scan.chosen:
        return report_columns(raw, studies, workers)
    table = report_table(raw, table_path, workers=workers, scan=scan).table
    wanted = table.select("study_id", "findings", "impression", "indication", "comparison")
    rows = {row.pop("study_id"): row for row in wanted.iter_rows(named=True)}

    def known(study_id: int, relpath: str) -> dict[str, str] | None:
        if scan.chosen.get(study_id) != relpath:
            return None
        return {k: v for k, v in rows[study_id].items() if v is not None}

    return report_columns(raw, studies, workers, known=known)


def write_sectioned_csv(table: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    """The official `mimic_cxr_sectioned.csv` layout: `study` is `s<study_id>`, missing is ``."""
    with (
        output_errors(path),
        atomic_path(path) as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as f,
    ):
        writer = csv.writer(f)
        writer.writerow(SECTIONED_CSV_COLUMNS)
        rows = table.select("study_id", *SECTIONED_CSV_COLUMNS[1:]).iter_rows()
        for study_id, *texts in rows:
            writer.writerow([f"s{study_id}", *(t or "" for t in texts)])

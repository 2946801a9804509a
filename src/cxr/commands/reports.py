"""`cxr reports`: section every report under `files/` into one Parquet table (and optionally the
official `mimic_cxr_sectioned.csv` layout for CheXpert/CheXbert labelers)."""

from __future__ import annotations

import argparse
import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELP = "section every radiology report into a Parquet table (and the official sectioned CSV)"

# `cxr reports` columns after study_id: the normalized sections, headers we had no name for, and
# the text the CheXpert labels were computed from. No subject_id, no path (it holds subject_id).
OTHER = "other"
LABELER_TEXT = "labeler_text"
# The official `mimic_cxr_sectioned.csv` (MIT-LCP/mimic-cxr txt/create_section_files.py) columns.
SECTIONED_CSV_COLUMNS = ("study", "impression", "findings", "last_paragraph", "comparison")


@dataclass(frozen=True)
class ReportsConfig:
    raw: Path
    out: Path
    csv: Path | None = None
    workers: int | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", default=None, help="raw root holding files/ (default: <data>/raw)")
    parser.add_argument(
        "--out", default=None, help="Parquet output (default: <data>/processed/reports.parquet)"
    )
    parser.add_argument(
        "--csv",
        default=None,
        metavar="PATH",
        help="also write the official mimic_cxr_sectioned.csv layout "
        "(study, impression, findings, last_paragraph, comparison)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: CPU count)"
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.paths import DataPaths, data_root

    root = DataPaths(data_root(args.data_dir))
    cfg = ReportsConfig(
        raw=Path(args.raw) if args.raw else root.raw,
        out=Path(args.out) if args.out else root.root / "processed" / "reports.parquet",
        csv=Path(args.csv) if args.csv else None,
        workers=args.workers,
    )
    summary = section_reports(cfg)
    _print_summary(summary, cfg)
    return 0


def section_reports(cfg: ReportsConfig) -> dict[str, Any]:
    """Section every report under `cfg.raw/files`, write the table(s); return the summary counts."""
    import polars as pl

    from cxr.core.atomic import atomic_path
    from cxr.core.errors import InputError
    from cxr.core.progress import make_progress
    from cxr.mimic.reports import SECTIONS, labeler_text, section_files, study_dir_reports
    from cxr.mimic.schema import FILES_DIR

    if cfg.workers is not None and cfg.workers < 1:
        raise InputError(f"--workers must be at least 1, got {cfg.workers}")
    files_dir = cfg.raw / FILES_DIR
    if not files_dir.is_dir():
        raise InputError(f"{files_dir}: no files/ folder under the raw root")

    # One report per study: the official place wins over the study folder (counted duplicates).
    chosen: dict[int, tuple[str, str]] = {}
    duplicates = 0
    for study_id, rel, place in study_dir_reports(files_dir):
        if study_id in chosen:
            duplicates += 1
            if place == "official" and chosen[study_id][1] != "official":
                chosen[study_id] = (rel, place)
        else:
            chosen[study_id] = (rel, place)
    if not chosen:
        raise InputError(f"{files_dir}: no report files (sXXXXXXXX.txt) found")
    study_ids = sorted(chosen)
    relpaths = [chosen[s][0] for s in study_ids]

    with make_progress() as progress:
        task = progress.add_task("sectioning reports", total=len(relpaths))
        results = section_files(
            cfg.raw,
            relpaths,
            workers=cfg.workers,
            on_progress=lambda n: progress.advance(task, n),
        )

    counts: Counter[str] = Counter()
    known = set(SECTIONS)
    columns: dict[str, list[str | None]] = {name: [] for name in (*SECTIONS, OTHER, LABELER_TEXT)}
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
    with atomic_path(cfg.out) as tmp:
        table.write_parquet(tmp)
    if cfg.csv is not None:
        write_sectioned_csv(table, cfg.csv)

    return {
        "reports": len(relpaths),
        "duplicates": duplicates,
        "with_findings": table["findings"].is_not_null().sum(),
        "with_impression": table["impression"].is_not_null().sum(),
        "empty_labeler_text": int((table[LABELER_TEXT] == "").sum()),
        "other_headers": other_names.most_common(5),
        **{k: counts.get(k, 0) for k in _ODDITIES},
    }


_ODDITIES = (
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


def write_sectioned_csv(table, path: str | os.PathLike[str]) -> None:
    """The official `mimic_cxr_sectioned.csv` layout: `study` is `s<study_id>`, missing is ``."""
    from cxr.core.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SECTIONED_CSV_COLUMNS)
        rows = table.select("study_id", *SECTIONED_CSV_COLUMNS[1:]).iter_rows()
        for study_id, *texts in rows:
            writer.writerow([f"s{study_id}", *(t or "" for t in texts)])


def _print_summary(summary: dict[str, Any], cfg: ReportsConfig) -> None:
    from cxr.core.progress import info
    from cxr.mimic.reports import LONG_REPORT_CHARS

    n = summary["reports"]
    info(f"sectioned {n} reports -> {cfg.out}" + (f" and {cfg.csv}" if cfg.csv else ""))
    info(
        f"  findings {summary['with_findings']}, impression {summary['with_impression']}, "
        f"neither {summary['no_findings_or_impression']}, "
        f"empty labeler text {summary['empty_labeler_text']}, addendum {summary['with_addendum']}"
    )
    info(
        f"  oddities: non-UTF-8 files {summary['non_utf8_files']} "
        f"({summary['replaced_chars']} characters replaced), empty {summary['empty']}, "
        f"no header {summary['no_header']}, CRLF {summary['crlf']}, "
        f"header glued to its text {summary['glued_header']}, "
        f"over {LONG_REPORT_CHARS:,} characters {summary['long']}, "
        f"in both places {summary['duplicates']}, unreadable {summary['unreadable']}"
    )
    if summary["other_headers"]:
        names = ", ".join(f"{k} ({v})" for k, v in summary["other_headers"])
        info(f"  unmapped headers (kept in `other`): {names}")

"""`cxr reports`: the reports table (`cxr.mimic.report_table`) and, optionally, the official
`mimic_cxr_sectioned.csv` layout for CheXpert/CheXbert labelers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "section every radiology report into a Parquet table (and the official sectioned CSV)"


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
    from cxr.core.errors import InputError
    from cxr.core.progress import make_progress
    from cxr.mimic.report_table import (
        REPORTS_TABLE,
        report_table,
        scan_reports,
        write_sectioned_csv,
    )

    root = args.paths
    raw = Path(args.raw) if args.raw else root.raw
    out = Path(args.out) if args.out else root.root / "processed" / REPORTS_TABLE
    csv = Path(args.csv) if args.csv else None
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    scan = scan_reports(raw)
    with make_progress() as progress:
        task = progress.add_task("sectioning reports", total=len(scan.chosen))
        result = report_table(
            raw,
            out,
            workers=args.workers,
            on_progress=lambda n: progress.advance(task, n),
            scan=scan,
        )
    if csv is not None:
        write_sectioned_csv(result.table, csv)
    _print_summary(result.summary, out, csv, result.reused)
    return 0


def _print_summary(summary: dict[str, Any], out: Path, csv: Path | None, reused: bool) -> None:
    from cxr.core.progress import info
    from cxr.mimic.reports import LONG_REPORT_CHARS

    n = summary["reports"]
    also = f" and {csv}" if csv else ""
    if reused:
        info(f"{out} is up to date ({n} reports, files unchanged): not sectioned again{also}")
    else:
        info(f"sectioned {n} reports -> {out}{also}")
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

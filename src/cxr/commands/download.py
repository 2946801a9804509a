"""`cxr download metadata`, `subset` and `demographics`: PhysioNet to data/raw, verified."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "download from PhysioNet: the metadata CSVs, then only the manifest's images and reports; "
    "MIMIC-IV demographics"
)


def _network(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dest", type=Path, default=None, help="raw root to fill (default: <data root>/raw)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries per file for connection errors, timeouts and 5xx (default: 5)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the server's next bytes before retrying (default: 60)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    from cxr.mimic import schema
    from cxr.mimic.download import VERSIONS, jpg_base_url

    _network(p)
    p.add_argument(
        "--version",
        dest="dataset_version",
        choices=VERSIONS,
        default=schema.VERSION,
        help=f"MIMIC-CXR-JPG version (default: {schema.VERSION}; {schema.RADIOLOGIST_VERSION} "
        "adds the radiologist-labelled test set to the metadata; images are the same)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help=f"MIMIC-CXR-JPG base URL (default: {jpg_base_url('VERSION')} of --version)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cxr.mimic.download import REPORTS_BASE_URL

    sub = parser.add_subparsers(dest="download_command", metavar="WHAT", required=True)
    meta = sub.add_parser(
        "metadata",
        help="SHA256SUMS.txt and the chexpert, split and metadata .csv.gz, verified",
        description="Fetch SHA256SUMS.txt, then the chexpert, split and metadata .csv.gz files "
        "(with --version 2.1.0 also the radiologist-labelled test set), each verified against "
        "it. Files already present and right are not fetched again.",
    )
    _common(meta)
    subset = sub.add_parser(
        "subset",
        help="exactly the manifest's JPEGs and reports, in parallel, resumable, verified",
        description="Fetch exactly the manifest's JPEGs (MIMIC-CXR-JPG) and its studies' reports "
        "(MIMIC-CXR) in parallel; each is written as .part, checked against SHA-256 and renamed. "
        "Rerun to resume: finished files are skipped, partial ones continue with a Range request.",
    )
    _common(subset)
    subset.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest parquet (default: <data root>/processed/manifest.parquet)",
    )
    subset.add_argument("--workers", type=int, default=8, help="parallel downloads (default: 8)")
    subset.add_argument(
        "--reports-base-url",
        default=REPORTS_BASE_URL,
        help=f"MIMIC-CXR base URL, for the reports (default: {REPORTS_BASE_URL})",
    )
    subset.add_argument(
        "--no-reports", action="store_true", help="images only (no MIMIC-CXR access needed)"
    )
    from cxr.mimic.download import mimic_iv_base_url
    from cxr.mimic.schema import MIMIC_IV_DEFAULT, MIMIC_IV_VERSIONS

    demo = sub.add_parser(
        "demographics",
        help="MIMIC-IV's patients and admissions tables (sex, age, race, insurance), verified",
        description="Fetch MIMIC-IV's SHA256SUMS.txt, then hosp/patients.csv.gz and "
        "hosp/admissions.csv.gz, each verified against it, into <dest>/mimiciv/<version>/hosp/. "
        "MIMIC-IV is its own PhysioNet project with its own data use agreement.",
    )
    _network(demo)
    demo.add_argument(
        "--mimic-iv-version",
        choices=MIMIC_IV_VERSIONS,
        default=MIMIC_IV_DEFAULT,
        help=f"MIMIC-IV version (default: {MIMIC_IV_DEFAULT}; 1.0 keeps the tables in core/, "
        "written to hosp/ all the same)",
    )
    demo.add_argument(
        "--base-url",
        default=None,
        help=f"MIMIC-IV base URL (default: {mimic_iv_base_url('VERSION')} of --mimic-iv-version)",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.mimic.download import (
        DownloadConfig,
        download_demographics,
        download_metadata,
        download_subset,
    )

    paths = args.paths
    if args.retries < 0 or args.timeout <= 0:
        raise CxrError("--retries must be >= 0 and --timeout > 0")
    if args.download_command == "demographics":
        cfg = DownloadConfig(
            dest=args.dest or paths.raw,
            mimic_iv_version=args.mimic_iv_version,
            mimic_iv_base_url=args.base_url,
            retries=args.retries,
            read_timeout_s=args.timeout,
        )
        return _report(download_demographics(cfg))
    options = dict(
        dest=args.dest or paths.raw,
        version=args.dataset_version,
        base_url=args.base_url,
        retries=args.retries,
        read_timeout_s=args.timeout,
    )
    if args.download_command == "metadata":
        summary = download_metadata(DownloadConfig(**options))
    else:
        if args.workers < 1:
            raise CxrError("--workers must be at least 1")
        cfg = DownloadConfig(
            **options,
            manifest=args.manifest or paths.manifest,
            reports_base_url=args.reports_base_url,
            reports=not args.no_reports,
            workers=args.workers,
        )
        summary = download_subset(cfg)
    return _report(summary)


def _report(summary) -> int:
    from cxr.core.progress import err_console, info
    from cxr.mimic.download import format_summary

    out, err = format_summary(summary)
    for line in out:
        info(line)
    for line in err:
        # Failures are printed even with --quiet: the exit status alone does not say which.
        err_console().print(line, markup=False)
    return 0 if summary.ok else 1


def interrupted(args: argparse.Namespace) -> str:
    return "run the same command again to resume (whole files are kept, .part files continue)"

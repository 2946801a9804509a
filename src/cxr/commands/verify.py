"""`cxr verify`: the data guide's step-4 check, schema checks, and the manifest's files."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "check the raw CSVs and files/ (and a manifest's images and reports; --deep decodes them)"
SHOW = 10  # problems listed before the count
MAKERS = (
    "`cxr download metadata` fetches the CSVs of MIMIC-CXR-JPG, `cxr demo` writes a synthetic tree"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", type=Path, help="raw root (default: <data dir>/raw)")
    p.add_argument(
        "--manifest",
        type=Path,
        help="also check that every selected image and report exists",
    )
    p.add_argument(
        "--deep", action="store_true", help="decode every selected image (with --manifest)"
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.progress import console, err_console, is_quiet
    from cxr.mimic.synthetic import DEMO_NOTE, is_demo_tree
    from cxr.verify import verify

    paths = args.paths
    raw = args.raw or paths.raw
    report = verify(raw, args.manifest, args.deep)
    demo = is_demo_tree(raw)
    out = console()
    if not is_quiet():
        out.print(f"raw: {raw}", markup=False)
        if demo:
            out.print(DEMO_NOTE, markup=False)
        for name, present in report.present.items():
            mark = "[green]present[/]" if present else "[red]MISSING[/]"
            out.print(f"  {mark:<20} {name}")
        if report.studies_with_labels is not None:
            out.print(f"studies with labels: {report.studies_with_labels}")
        if args.manifest:
            out.print(
                f"manifest: {report.checked_images} images, {report.checked_reports} reports checked"
            )
            if args.deep:
                out.print(f"decoded: {report.decoded_images} images")
    if report.problems:
        err = err_console()
        total = sum(1 + p.more for p in report.problems)
        err.print(f"{total} problem(s) in {len(report.problems)} check(s):", markup=False)
        for problem in report.problems[:SHOW]:
            err.print(f"  {problem}", markup=False)
        if len(report.problems) > SHOW:
            err.print(f"  ... and {len(report.problems) - SHOW} more checks failed", markup=False)
    if not report.ok:
        missing = [n for n, ok in report.present.items() if not ok]
        if missing:
            err_console().print(
                f"missing: {', '.join(missing)} ({MAKERS})",
                markup=False,
            )
        if any(
            "missing" in p.message and p.file.startswith(("image ", "report of "))
            for p in report.problems
        ):
            err_console().print(
                "`cxr download subset` fetches the manifest's missing images and reports",
                markup=False,
            )
        return 1
    if not is_quiet():
        tail = " (synthetic demo data)" if demo else ""
        out.print(f"[green]verify: all checks passed{tail}[/]")
    return 0

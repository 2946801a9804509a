"""`cxr compare`: evaluations of the same rows side by side, with paired intervals and DeLong."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare evaluations of the same rows: AUROC differences, paired intervals, DeLong p"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="+", type=Path, metavar="EVAL_DIR", help="`cxr evaluate` output directories"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: beside the first)"
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="the manifest they were evaluated on (default: the one the first recorded)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="paired resamples of patients (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.core.progress import console, is_quiet
    from cxr.evaluation.compare import CompareConfig, compare, table_lines, write_comparison

    if args.bootstrap < 0:
        raise CxrError("--bootstrap must be >= 0")
    cfg = CompareConfig(
        dirs=tuple(args.dirs),
        out=args.out,
        manifest=args.manifest,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        data_root=args.paths.root,
    )
    result = compare(cfg)
    page = write_comparison(result, cfg.out_dir())
    if not is_quiet():
        out = console()
        for pair in [result, *result.get("more", [])]:
            out.print(f"a = {pair['a']}, b = {pair['b']} (delta = a - b; p: DeLong)", markup=False)
            for line in table_lines(pair):
                out.print(line, markup=False, highlight=False)
        left = result.get("labels_left_out") or {}
        if left:
            out.print(
                "left out: " + "; ".join(f"{k} ({v})" for k, v in left.items()),
                markup=False,
                highlight=False,
            )
        out.print(
            "p: DeLong, which treats studies as independent; trust the patient interval.",
            markup=False,
            highlight=False,
        )
        out.print(f"report: {page}", markup=False, highlight=False)
    return 0

"""`cxr probe`: linear probes on stored embeddings, per fraction of the training patients."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "linear probes on stored embeddings per fraction of the training patients"

# Written out so that building the parser imports nothing heavy; tests/test_probe.py checks they
# equal the library's defaults (cxr.evaluation.probe) and `cxr train`'s (TrainConfig).
FRACTIONS = "0.01,0.1,1.0"
C_GRID = "0.0001,0.001,0.01,0.1,1"
TRAIN_UNCERTAIN, TRAIN_MISSING, TRAIN_LABEL_SOURCE = "ignore", "zeros", "chexpert"
UNCERTAIN_CHOICES, MISSING_CHOICES = ("ignore", "zeros", "ones"), ("zeros", "ignore")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cxr.commands.evaluate import add_protocol_arguments, add_subgroup_arguments

    parser.add_argument(
        "--embeddings",
        required=True,
        metavar="NAME",
        help="a store written by `cxr embed --model ...`: its name (<data root>/interim/"
        "embed-NAME) or its directory",
    )
    parser.add_argument(
        "--fractions",
        default=FRACTIONS,
        help="fractions of the train split's patients, increasing, each in (0, 1]; the subsets "
        "are nested (the same seeded permutation)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory: probe.json, probe.html, fraction-F/ per fraction "
        "(default: reports/probe-NAME)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest (default: <data root>/processed/manifest.parquet)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "validate"),
        help="the split to score (default: test); validate is spent choosing each label's C "
        "and the operating points, so its figures are optimistic",
    )
    parser.add_argument(
        "--uncertain-policy",
        default=TRAIN_UNCERTAIN,
        choices=UNCERTAIN_CHOICES,
        help="training targets: uncertain labels left out (ignore), 0 (zeros) or 1 (ones), as "
        "`cxr train policy.uncertain`",
    )
    parser.add_argument(
        "--missing-policy",
        default=TRAIN_MISSING,
        choices=MISSING_CHOICES,
        help="training targets: blank labels as 0 (zeros) or left out (ignore), as "
        "`cxr train policy.missing`",
    )
    parser.add_argument(
        "--label-source",
        default=TRAIN_LABEL_SOURCE,
        choices=("chexpert", "negbio"),
        help="training targets from this labeler's columns, as `cxr train label_source`",
    )
    parser.add_argument(
        "--C",
        dest="c_grid",
        default=C_GRID,
        metavar="GRID",
        help="inverse regularisation strengths tried per label and fraction; the one with the "
        "best validate AUROC is kept",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the patient subsets and of the bootstrap"
    )
    add_protocol_arguments(parser)
    add_subgroup_arguments(parser)
    parser.add_argument(
        "--workers", type=int, default=1, help="labels fitted at the same time (threads)"
    )


def run(args: argparse.Namespace) -> int:
    import textwrap

    from cxr.core.errors import CxrError
    from cxr.core.progress import console, is_quiet
    from cxr.evaluation.probe import ProbeConfig, parse_fractions, parse_grid, probe, store_name
    from cxr.evaluation.probe_report import not_fitted_lines, summary, table_lines, write_probe
    from cxr.evaluation.report import DEMO_BANNER
    from cxr.evaluation.subgroups import parse_attributes
    from cxr.mimic.policy import LabelPolicy

    if args.min_cell < 1:
        raise CxrError(f"--min-cell must be at least 1, got {args.min_cell}")
    if args.seed < 0 or args.seed > 2**32 - 1:
        raise CxrError(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    cfg = ProbeConfig(
        embeddings=args.embeddings,
        fractions=parse_fractions(args.fractions),
        out=args.out,
        manifest=args.manifest,
        split=args.split,
        level=args.level,
        uncertain=args.uncertain,
        labels=args.labels,
        min_positives=args.min_positives,
        n_bootstrap=args.bootstrap,
        subgroups=parse_attributes(args.subgroups),  # names checked here, "all" in probe()
        min_cell=args.min_cell,
        policy=LabelPolicy(uncertain=args.uncertain_policy, missing=args.missing_policy),
        label_source=args.label_source,
        seed=args.seed,
        c_grid=parse_grid(args.c_grid),
        workers=args.workers,
        data_root=args.paths.root,
    )
    if cfg.out is not None and cfg.out.exists() and not cfg.out.is_dir():
        raise CxrError(f"{cfg.out}: --out is an existing file, not a directory")
    result = probe(cfg)
    out_dir = cfg.out_dir(store_name(result.meta, result.store))
    page = write_probe(result, out_dir)
    if not is_quiet():
        s = summary(result)
        out = console()
        if s["synthetic_demo"]:
            out.print(DEMO_BANNER, markup=False)
        emb = s["embeddings"]
        out.print(
            textwrap.fill(
                f"linear probe on {emb['name']} (dim {emb['dim']}): {s['split']} split, "
                f"{s['level']} level, {s['training']['patients']} train patients",
                80,
            ),
            markup=False,
            highlight=False,
        )
        for line in s["notes"]:
            out.print(textwrap.fill(line, 80, subsequent_indent="  "), markup=False)
        for line in table_lines(s):
            out.print(line, markup=False, highlight=False)
        for line in not_fitted_lines(s):
            out.print(textwrap.fill(line, 80, subsequent_indent="  "), markup=False)
        if cfg.subgroups:
            out.print(
                "subgroups: in each fraction's report.html and metrics.json (cells of fewer "
                f"than {cfg.min_cell} patients suppressed)",
                markup=False,
            )
        out.print(f"report: {page}", markup=False, highlight=False)
    return 0

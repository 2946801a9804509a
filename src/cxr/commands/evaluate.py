"""`cxr evaluate`: study-level metrics with bootstrap intervals, figures and an HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate a checkpoint on a split: metrics.json, predictions.csv, figures, report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint (best.pt)")
    parser.add_argument("--split", default="test", choices=("test", "validate", "train"))
    parser.add_argument(
        "--level",
        default="study",
        choices=("study", "image"),
        help="study: mean of a study's image probabilities (default); image: per image",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples of studies for AUROC CIs (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default reports/<run name>)"
    )
    parser.add_argument("--manifest", type=Path, default=None, help="default <data>/processed/")
    parser.add_argument(
        "--cache", type=Path, default=None, help="default <data>/interim/cache-<size>"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cxr.core.errors import CxrError
    from cxr.core.paths import data_root
    from cxr.core.progress import console, is_quiet
    from cxr.evaluation.evaluate import (
        TABLE_HEADER,
        EvaluateConfig,
        evaluate,
        metric_rows,
        policy_text,
    )

    if args.bootstrap < 0 or args.batch_size < 1:
        raise CxrError("--bootstrap must be >= 0 and --batch-size >= 1")
    cfg = EvaluateConfig(
        checkpoint=args.checkpoint,
        split=args.split,
        level=args.level,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        out=args.out,
        manifest=args.manifest,
        cache=args.cache,
        batch_size=args.batch_size,
        device=args.device,
        data_root=data_root(args.data_dir),
    )
    metrics = evaluate(cfg)
    if not is_quiet():
        out = console()
        if not out.is_terminal:  # logs and pipes: keep each table row on one line
            out.width = max(out.width, 150)
        table = Table(title=f"{metrics['split']} split, {metrics['level']} level", show_lines=False)
        for h in TABLE_HEADER:
            table.add_column(h, justify="left" if h == "label" else "right")
        for row in metric_rows(metrics):
            table.add_row(*row)
        out.print(f"label policy: {policy_text(metrics['label_policy'])} (uncertain excluded)")
        out.print(table)
        if metrics.get("note"):
            out.print(metrics["note"])
        out.print(f"report: {cfg.out_dir() / 'report.html'}")
    return 0

"""`cxr evaluate`: one protocol for every run, patient-bootstrap intervals, fingerprints, HTML."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "evaluate a checkpoint or a published model on a split: metrics.json, predictions, report.html"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="a cxr checkpoint (best.pt)")
    which.add_argument(
        "--model",
        metavar="SOURCE",
        help="a published model instead: xrv:<weights> (torchxrayvision, e.g. "
        "xrv:densenet121-res224-mimic_ch) or cxr:<checkpoint>; scored from the image files with "
        "its own preprocessing",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="with --model: its weights file, instead of the library's cache or download",
    )
    parser.add_argument(
        "--split",
        default="validate",
        choices=("validate", "test", "train"),
        help="the split to score; validate also chooses the operating points, so scoring "
        "test must be asked for (default: validate)",
    )
    add_protocol_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default reports/<run name>)"
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest to score (default: the one the run trained on; with --data-dir or "
        "$CXR_DATA_DIR, <data root>/processed/manifest.parquet)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="image cache (default: the run's; with --data-dir, <data root>/interim/cache-<size>)",
    )
    add_subgroup_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--workers", type=int, default=2, help="with --model: image decoding threads"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else cpu), cpu, cuda or cuda:N"
    )


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation protocol's options and the scoring's, shared by every command that scores
    (`cxr evaluate`, `cxr probe`) so that their rows and figures mean the same."""
    parser.add_argument(
        "--level",
        default="study",
        choices=("study", "image"),
        help="study: mean of a study's image probabilities (default); image: per image",
    )
    parser.add_argument(
        "--uncertain",
        default="exclude",
        choices=("exclude", "negative"),
        help="evaluation: uncertain (-1) labels left out (default) or scored as negative; "
        "blank is negative",
    )
    parser.add_argument(
        "--labels",
        default="chexpert",
        choices=("chexpert", "negbio", "radiologist"),
        help="evaluation targets: the CheXpert labeler's (default), the NegBio labeler's, or "
        "the 2.1.0 radiologists' (test split)",
    )
    parser.add_argument(
        "--min-positives",
        type=int,
        default=10,
        help="positive studies a label needs to enter the macro averages (default 10)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="resamples of patients for the intervals (0: none)",
    )


def add_subgroup_arguments(parser: argparse.ArgumentParser) -> None:
    """Subgroup analysis, as every scoring command offers it (`cxr evaluate`, `cxr probe`)."""
    parser.add_argument(
        "--subgroups",
        default="",
        metavar="ATTRS",
        help="figures per subgroup of these comma-separated attributes: sex, age_group, "
        "race_group, insurance, view_position (or all)",
    )
    parser.add_argument(
        "--min-cell",
        type=int,
        default=20,
        help="patients a subgroup needs to be shown; smaller ones are suppressed (default 20)",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.core.progress import console, is_quiet, phase
    from cxr.evaluation.evaluate import EvaluateConfig, evaluate, write_evaluation
    from cxr.evaluation.report import (
        DEMO_BANNER,
        left_out_text,
        protocol_text,
        table_lines,
        write_report,
    )
    from cxr.evaluation.subgroup_report import subgroup_lines
    from cxr.evaluation.subgroups import parse_attributes

    if args.bootstrap < 0 or args.batch_size < 1 or args.min_positives < 0 or args.workers < 1:
        raise CxrError(
            "--bootstrap and --min-positives must be >= 0, --batch-size and --workers >= 1"
        )
    if args.weights is not None and args.model is None:
        raise CxrError("--weights goes with --model (a checkpoint carries its own weights)")
    if args.min_cell < 1:
        raise CxrError(f"--min-cell must be at least 1, got {args.min_cell}")
    subgroups = parse_attributes(args.subgroups)  # names checked here, "all" in evaluate()
    cfg = EvaluateConfig(
        checkpoint=args.checkpoint,
        model=args.model,
        weights=args.weights,
        workers=args.workers,
        split=args.split,
        level=args.level,
        uncertain=args.uncertain,
        labels=args.labels,
        min_positives=args.min_positives,
        subgroups=subgroups,
        min_cell=args.min_cell,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        out=args.out,
        manifest=args.manifest,
        cache=args.cache,
        batch_size=args.batch_size,
        device=args.device,
        data_root=args.paths.root,
        data_root_given=args.paths.given,
    )
    out_dir = cfg.out_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise CxrError(f"{out_dir}: --out is an existing file, not a directory")
    evaluation = evaluate(cfg)
    write_evaluation(evaluation, out_dir)
    with phase("figures and report.html"):
        page = write_report(evaluation, out_dir, _config_shown(evaluation, cfg))
    metrics = evaluation.metrics
    if not is_quiet():
        out = console()
        if metrics["provenance"]["synthetic_demo"]:
            out.print(DEMO_BANNER, markup=False)
        out.print(f"protocol: {protocol_text(metrics)}", markup=False)
        out.print(f"{metrics['split']} split, {metrics['level']} level:", markup=False)
        for line in table_lines(metrics):
            out.print(line, markup=False, highlight=False)
        out.print(left_out_text(metrics), markup=False)
        out.print(
            "the full table (validate figures, operating points, calibration): "
            "report.html and metrics.json",
            markup=False,
        )
        boot = metrics["bootstrap"]
        out.print(
            f"intervals: {boot['n']} patient resamples (seed {boot['seed']}); "
            f"rows fingerprint {metrics['rows_fingerprint'][:16]}"
        )
        if metrics.get("note"):
            out.print(metrics["note"])
        for line in subgroup_lines(metrics):
            out.print(line, markup=False, highlight=False)
        out.print(f"report: {page}")
    return 0


def _config_shown(evaluation, cfg) -> dict:
    """The run's configuration as the report shows it (no path that could name a patient)."""
    import dataclasses

    shown = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    shown["model"] = evaluation.metrics.get("model")
    return shown

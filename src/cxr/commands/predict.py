"""`cxr predict`: probabilities (and Grad-CAM overlays) for X-ray files: JPEG, PNG, DICOM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "predict label probabilities for X-ray files or directories (JPEG, PNG, DICOM)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint (best.pt)")
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE_OR_DIR",
        help="image files (JPEG, PNG, DICOM) or directories searched recursively",
    )
    parser.add_argument(
        "--cam",
        action="store_true",
        help="write Grad-CAM overlays of the top-k labels to <out>/cam/<image>__<Label>.png",
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="labels per image with --cam (default 3)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for predictions.<format> (default: stdout)",
    )
    parser.add_argument(
        "--format", default="csv", choices=("csv", "json"), help="table format: csv or json"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: CUDA when available, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--thresholds",
        choices=("validate",),
        default=None,
        help="also write a yes/no decision per label, at the thresholds training chose on the "
        "validate split (the checkpoint records them)",
    )
    parser.add_argument(
        "--equalize",
        choices=("auto", "all", "none"),
        default="auto",
        help="histogram-equalize inputs as MIMIC-CXR-JPG's images were: auto (PNG and DICOM; "
        "JPEGs are taken as MIMIC-CXR-JPG's), all, or none (default: auto)",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.core.progress import info
    from cxr.inference.predict import PredictConfig, predict

    if args.top_k < 1 or args.batch_size < 1:
        raise CxrError("--top-k and --batch-size must be >= 1")
    cfg = PredictConfig(
        checkpoint=args.checkpoint,
        inputs=tuple(args.inputs),
        cam=args.cam,
        top_k=args.top_k,
        out=args.out,
        format=args.format,
        batch_size=args.batch_size,
        device=args.device,
        thresholds=args.thresholds,
        equalize=args.equalize,
    )
    result, text = predict(cfg)
    for note in result.notes:
        print(f"cxr predict: warning: {note}", file=sys.stderr)
    for file, reason in result.failures:
        print(f"cxr predict: skipped {file}: {reason}", file=sys.stderr)
    if cfg.out is None:
        sys.stdout.write(text)
    else:
        info(f"{len(result.rows)} images -> {cfg.out / f'predictions.{cfg.format}'}")
        if result.cams:
            info(f"{len(result.cams)} Grad-CAM overlays -> {cfg.out / 'cam'}")
    return 1 if result.failures else 0

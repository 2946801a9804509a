"""`cxr embed`: embeddings of every manifest image from a published, foundation or cxr model."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

HELP = "embed the manifest's images once with a model: data/interim/embed-<name>/ (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="SOURCE",
        help="xrv:<weights> (torchxrayvision, e.g. xrv:densenet121-res224-mimic_ch), rad-dino "
        "(microsoft/rad-dino) or cxr:<checkpoint> (its penultimate features)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights file (xrv) or directory (rad-dino) to load instead of the library's "
        "cache or hub: for machines without internet",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest parquet (default: <data root>/processed/manifest.parquet)",
    )
    parser.add_argument(
        "--raw",
        type=Path,
        default=None,
        help="raw root the manifest's image_path is relative to (default: manifest.json's raw_dir)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="store directory (default: <data root>/interim/embed-<model name>)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="image cache for cxr: checkpoints (default: <data root>/interim/cache-<its size> "
        "when complete, else the image files)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else cpu), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="compute every embedding again (a store of another model is refused without it)",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.progress import info
    from cxr.pretrained.embed import EmbedConfig, build_embeddings

    paths = args.paths
    cfg = EmbedConfig(
        model=args.model,
        manifest=args.manifest or paths.manifest,
        interim=paths.interim,
        weights=args.weights,
        raw=args.raw,
        out=args.out,
        cache=args.cache,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        force=args.force,
    )
    result = build_embeddings(cfg)
    report(result)
    if result.failed:
        # Always printed: failures need attention. dicom_id and reason only (paths name patients).
        print(f"{len(result.failed)} image(s) could not be read; their rows are left out:")
        for reason, count in Counter(r for _, r in result.failed).most_common(10):
            print(f"  {count} x {reason}")
        for dicom_id, reason in result.failed[:20]:
            print(f"  {dicom_id}: {reason}")
        if len(result.failed) > 20:
            print(f"  ... and {len(result.failed) - 20} more (index.parquet lists them all)")
    default = paths.interim / result.dir.name
    name = result.dir.name.removeprefix("embed-")
    shown = name if result.dir.resolve() == default.resolve() else str(result.dir)
    info(f"next: `cxr probe --embeddings {shown}`")
    return 0


def report(result) -> None:
    from cxr.core.progress import info

    attempted = result.done + len(result.failed)
    rate = attempted / result.seconds if result.seconds > 0 else 0.0
    if attempted == 0:
        info(f"embeddings {result.dir}: nothing to do, {result.skipped} already computed")
    else:
        source = f", {result.from_cache} from the image cache" if result.from_cache else ""
        info(
            f"embeddings {result.dir}: {result.done} computed ({rate:.1f} images/s{source}), "
            f"{len(result.failed)} failed, {result.skipped} already computed"
        )
    if result.carried:
        info(f"  the manifest's image set changed: {result.carried} embeddings kept")
    info(f"  {result.n} images x {result.dim} dimensions, float16")


def interrupted(args: argparse.Namespace) -> str:
    return "run the same command again to resume (computed embeddings are kept)"

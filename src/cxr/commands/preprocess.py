"""`cxr preprocess`: decode every manifest image once into the memory-mapped cache."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from cxr.core.defaults import CACHE_SIZE

HELP = "decode and resize the manifest's images once into data/interim/cache-<size>/ (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--size",
        type=int,
        default=CACHE_SIZE,
        help="side S of the square cached images; it serves models of input S or smaller",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default: one per CPU core)"
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="fill only the I-th of N blocks of rows (0-based), e.g. one Slurm array task each",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="decode every image again, even those already cached (a cache made by another "
        "decoding method is refused without it)",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.progress import info
    from cxr.imaging.cache import PreprocessConfig, build_cache, parse_shard

    paths = args.paths
    config = PreprocessConfig(
        manifest=args.manifest or paths.manifest,
        cache_dir=paths.cache(args.size),
        raw=args.raw,
        size=args.size,
        workers=args.workers,
        shard=parse_shard(args.shard) if args.shard else None,
        force=args.force,
    )
    result = build_cache(config)
    attempted = result.done + len(result.failed)
    rate = attempted / result.seconds if result.seconds > 0 else 0.0
    where = f" (shard {args.shard})" if args.shard else ""
    if attempted == 0:
        info(f"cache {config.cache_dir}{where}: nothing to do, {result.skipped} already cached")
    else:
        info(
            f"cache {config.cache_dir}{where}: {result.done} decoded, {len(result.failed)} "
            f"failed ({rate:.0f} images/s), {result.skipped} skipped as already cached"
        )
    if result.carried:
        info(
            f"  the manifest's image set changed: {result.carried} images kept from the cache, "
            "only the others decoded"
        )
    if result.failed:
        # Failures are always printed (not only without --quiet): they need the user's attention.
        # dicom_id and reason only: paths contain subject_id.
        print(f"{len(result.failed)} image(s) failed and are recorded in index.parquet:")
        for reason, count in Counter(r for _, r in result.failed).most_common(10):
            print(f"  {count} x {reason}")
        for dicom_id, reason in result.failed[:20]:
            print(f"  {dicom_id}: {reason}")
        if len(result.failed) > 20:
            print(f"  ... and {len(result.failed) - 20} more")
        if any(reason == "file not found" for _, reason in result.failed):
            print(
                "  `cxr download subset` fetches the manifest's missing images; "
                "a rerun of this command then decodes only those"
            )
    if result.complete:
        info(f"complete: {result.n} rows, index.parquet written; next: `cxr train`")
    else:
        info(f"{result.pending} of {result.n} rows still to do (other shards); rerun to finish")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    return "run the same command again to resume (decoded images are kept)"

"""`cxr view`: a local, private browser over the manifest and evaluations (studies, reports,
labels, predictions, heatmaps)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

HELP = "browse studies, reports, labels, predictions and heatmaps in a local, private web app"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="*", type=Path, metavar="EVAL_DIR", help="`cxr evaluate` output directories"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach (the data is credentialed)",
    )
    parser.add_argument(
        "--manifest", type=Path, default=None, help="default <data>/processed/manifest.parquet"
    )
    parser.add_argument(
        "--raw", type=Path, default=None, help="raw root (default: the manifest's raw_dir)"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="image cache for thumbnails (default: found)"
    )
    parser.add_argument(
        "--heatmaps",
        type=Path,
        default=None,
        help="where heatmaps are kept (default <data>/interim/view-heatmaps)",
    )
    parser.add_argument("--device", default="auto", help="device for heatmaps (auto, cpu, cuda)")


def run(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.core.progress import err_console, info
    from cxr.view.app import create_app, default_heatmap_dir
    from cxr.view.data import load_view_data
    from cxr.view.images import Pixels, find_cache
    from cxr.view.server import address, bind, check_host, new_token, serve

    if not 0 <= args.port <= 65535:
        raise CxrError(f"--port must be between 0 and 65535, got {args.port}")
    warning = check_host(args.host, args.allow_remote)
    root = args.paths.root
    manifest = Path(args.manifest or args.paths.manifest)
    data = load_view_data(manifest, list(args.dirs), root, args.raw)
    cache = find_cache(root, manifest, args.cache)
    pixels = Pixels(data, cache, args.heatmaps or default_heatmap_dir(root), args.device)
    token = new_token()
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    if warning:
        err_console().print(warning, markup=False)
    info(
        f"{data.studies.height} studies, {data.images.height} images, "
        f"label sources: {', '.join(data.sources)}; evaluations: "
        f"{', '.join(e.name for e in data.evals) or 'none'}; thumbnails from "
        + (f"{cache.dir}" if cache is not None else "the image files (no cache found)")
    )
    # The address is printed even with --quiet: it is the only way in.
    print(f"cxr view: open {address(args.host, port, token)}  (Ctrl-C stops)", flush=True)
    # Ctrl-C is how a server is stopped: uvicorn shuts down, then re-raises it.
    with contextlib.suppress(KeyboardInterrupt):
        serve(create_app(data, pixels, token), sock)
    err_console().print("cxr view: stopped", markup=False)
    return 0

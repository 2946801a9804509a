"""The `cxr` command line: thin. Each subcommand parses its options and calls one function.

Subcommands live in `cxr.commands.<name>`; each defines `HELP`, `add_arguments(parser)` and
`run(args) -> int`, and imports its heavy dependencies (torch...) only inside `run`, so
`cxr --help`, `cxr verify` and `cxr manifest` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cxr import __version__
from cxr.core.errors import CxrError

# Order is the order shown in `cxr --help`: the pipeline's order.
COMMANDS: tuple[str, ...] = (
    "demo",
    "download",
    "verify",
    "manifest",
    "preprocess",
    "reports",
    "train",
    "evaluate",
    "compare",
    "predict",
    "view",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="MIMIC-CXR-JPG pipeline: download, verify, manifest, preprocess, train, "
        "evaluate, compare, predict.",
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data root (default: $CXR_DATA_DIR or ./data); raw/, processed/, interim/ live under it",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"cxr.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `cxr train` takes KEY=VALUE overrides anywhere among its options (`train a=1 --out X b=2`):
    # argparse binds a positional list once, so overrides after an option arrive here.
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from cxr.core.progress import set_quiet

    set_quiet(args.quiet)
    try:
        return int(args._run(args) or 0)
    except CxrError as exc:
        print(f"cxr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cxr {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

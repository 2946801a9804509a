"""The `cxr` command line: thin. Each subcommand parses its options and calls one function.

Subcommands live in `cxr.commands.<name>`; each defines `HELP`, `add_arguments(parser)` and
`run(args) -> int`, and imports its heavy dependencies (torch...) only inside `run`, so
`cxr --help`, `cxr verify` and `cxr manifest` never import torch. A command that a rerun resumes
also defines `interrupted(args) -> str`, what Ctrl-C prints.

The global options (`--data-dir`, `--quiet`) are accepted before and after the command, and the
data root is resolved here, once: every command reads `args.paths` (a `cxr.core.paths.DataPaths`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys

from cxr import __version__
from cxr.core.errors import CxrError, MissingInput

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
    "embed",
    "probe",
    "predict",
    "view",
)

DESCRIPTION = (
    "MIMIC-CXR-JPG pipeline, one command per stage: "
    + ", ".join(COMMANDS)
    + ". `cxr COMMAND --help` lists a command's options and their defaults."
)
EPILOG = "The global options --data-dir and --quiet go before or after the command."


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            text
            and action.option_strings
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
            text += f" (default: {str(shown).replace('%', '%%')})"
        return text


class CxrParser(argparse.ArgumentParser):
    """argparse with defaults in the help and a "did you mean" on a mistyped choice."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        super().error(suggest_choice(message))


def suggest_choice(message: str) -> str:
    """argparse's "invalid choice: 'trian' (choose from ...)" plus the closest choice."""
    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if m:
        choices = re.findall(r"'([^']*)'", m.group(2))
        close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.5)
        if close:
            return f"{message}; did you mean '{close[0]}'?"
    return message


def add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--data-dir and --quiet. After the command they default to SUPPRESS, so an option given
    before the command is kept unless it is given again after it."""
    keep = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root: raw/, processed/, interim/ live under it "
        "(default: $CXR_DATA_DIR, else ./data)",
        **({"default": None} if top else keep),
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars or summaries",
        **({"default": False} if top else keep),
    )


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every parser under it (`download metadata`, `download subset`)."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out += _leaf_parsers(child)
    return out


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for p in _leaf_parsers(parser) for a in p._actions for s in a.option_strings]


def build_parser() -> CxrParser:
    parser = CxrParser(prog="cxr", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.cxr_commands = {}
    for name in COMMANDS:
        module = importlib.import_module(f"cxr.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=EPILOG)
        module.add_arguments(p)
        for leaf in _leaf_parsers(p):
            add_global_options(leaf, top=False)
        p.set_defaults(_run=module.run, _module=module)
        parser.cxr_commands[name] = p
    return parser


def _config_key(name: str) -> str | None:
    """The TrainConfig key an option name means (`--image-size` -> image_size), or None."""
    import dataclasses

    from cxr.training.config import TrainConfig

    key = name.replace("-", "_")
    top = key.split(".", 1)[0]
    return key if top in {f.name for f in dataclasses.fields(TrainConfig)} else None


def _train_option_as_key(argv: list[str], extra: list[str]) -> str | None:
    """`cxr train --epochs 2`: the message saying to write `epochs=2`, or None."""
    for token in extra:
        if not token.startswith("--"):
            continue
        name, _, value = token[2:].partition("=")
        key = _config_key(name)
        if key is None:
            continue
        if not value and token in argv:
            i = argv.index(token)
            if i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
                value = argv[i + 1]
        example = f"{key}={value or 'VALUE'}"
        return (
            f"{token} is not an option: config keys are written KEY=VALUE, "
            f"e.g. `cxr train {example}` (cxr train --print-config lists every key)"
        )
    return None


def _unknown_message(command_parser: argparse.ArgumentParser, extra: list[str]) -> str:
    known = option_strings(command_parser)
    shown = []
    for token in extra:
        close = []
        if token.startswith("-"):
            close = difflib.get_close_matches(token.split("=", 1)[0], known, n=1, cutoff=0.6)
        shown.append(f"{token} (did you mean {close[0]}?)" if close else token)
    return f"unrecognized arguments: {' '.join(shown)}"


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse a command line as `main` does (usage errors exit 2), the data root resolved."""
    from cxr.core.paths import resolve_paths

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command_parser = parser.cxr_commands[args.command]
    if extra and args.command == "train":
        as_key = _train_option_as_key(argv, extra)
        if as_key:
            command_parser.error(as_key)
        # `cxr train` takes KEY=VALUE overrides anywhere among its options (`train a=1 --out X
        # b=2`): argparse binds a positional list once, so overrides after an option arrive here.
        if all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
            extra = []
    if extra:
        command_parser.error(_unknown_message(command_parser, extra))
    args.paths = resolve_paths(args.data_dir)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = parse(argv)
    from cxr.core.privacy import mask_subject
    from cxr.core.progress import set_quiet

    set_quiet(args.quiet)
    try:
        return int(args._run(args) or 0)
    except CxrError as exc:
        message = str(exc)
        if isinstance(exc, MissingInput):
            if args.paths.holds(exc.path):
                message += f" [{args.paths.describe()}]"
            elif not exc.path.is_absolute():
                message += f" [looked in {mask_subject(str(exc.path.absolute()))}]"
        print(f"cxr {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = getattr(args._module, "interrupted", None)
        tail = f"; {hint(args)}" if hint else ""
        print(f"cxr {args.command}: interrupted{tail}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

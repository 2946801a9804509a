"""docs/commands.md and the README agree with the command line.

Each command's **Options** block in docs/commands.md is what `--help` prints (compared with
whitespace collapsed, so a terminal's width does not matter), and every `cxr ...` example in the
README's and docs' bash blocks parses. After changing an option, rewrite the blocks with
`CXR_UPDATE_DOCS=1 pytest tests/test_docs.py` and read the diff.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from cxr.cli import _leaf_parsers, build_parser, parse

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "commands.md"
README = ROOT / "README.md"
BLOCK = re.compile(r"```text\n(usage: .*?)```", re.S)


def help_texts() -> dict[str, str]:
    """prog ("cxr", "cxr demo", "cxr download subset"...) -> its --help, 100 columns wide."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return {leaf.prog: leaf.format_help() for leaf in _leaf_parsers(build_parser())}
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _prog_of(block: str, progs) -> str | None:
    first = block.split("\n", 1)[0].removeprefix("usage: ")
    matches = [p for p in progs if first == p or first.startswith(p + " ")]
    return max(matches, key=len) if matches else None


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_every_options_block_is_what_help_prints():
    helps = help_texts()
    text = DOCS.read_text()
    if os.environ.get("CXR_UPDATE_DOCS"):
        text = BLOCK.sub(lambda m: f"```text\n{helps[_prog_of(m.group(1), helps)]}```", text)
        DOCS.write_text(text)
    found = {}
    for m in BLOCK.finditer(text):
        prog = _prog_of(m.group(1), helps)
        assert prog is not None, f"an Options block for no command: {m.group(1)[:60]!r}"
        found[prog] = m.group(1)
    wanted = set(helps) - {"cxr download"}  # its two subcommands have their blocks
    assert sorted(wanted - set(found)) == [], (
        "commands without an Options block in docs/commands.md"
    )
    for prog, block in found.items():
        assert _squash(block) == _squash(helps[prog]), (
            f"docs/commands.md: the Options block of `{prog}` differs from `{prog} --help`; "
            "rewrite it with CXR_UPDATE_DOCS=1 pytest tests/test_docs.py"
        )


def _examples(path: Path) -> list[str]:
    """The `cxr ...` command lines of a Markdown file's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("cxr "):
                    commands.append(part)
    return commands


@pytest.mark.parametrize("path", [README, DOCS], ids=["README", "docs/commands.md"])
def test_every_example_command_parses(path):
    examples = _examples(path)
    assert len(examples) >= 5
    for line in examples:
        argv = shlex.split(re.sub(r"\$[A-Z_]+", "1", line))[1:]  # shell variables: a number
        try:
            parse(argv)
        except SystemExit as exc:
            pytest.fail(f"{path.name}: `{line}` does not parse (exit {exc.code})")

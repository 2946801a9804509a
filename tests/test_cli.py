"""The CLI shell: help works, and torch-free commands stay torch-free."""

import subprocess
import sys


def test_help_lists_commands():
    from cxr.cli import COMMANDS, build_parser

    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text


def test_cli_import_does_not_import_torch():
    code = "import sys; from cxr.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

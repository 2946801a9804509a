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


def test_train_overrides_may_follow_options(monkeypatch):
    import pytest

    import cxr.commands.train as train_cmd
    from cxr.cli import main

    seen = {}
    monkeypatch.setattr(train_cmd, "run", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", "epochs=2", "--out", "x", "lr=0.1"]) == 0
    assert seen["overrides"] == ["epochs=2", "lr=0.1"] and seen["out"] == "x"
    # An unknown option is still a usage error (exit 2), in train as elsewhere.
    for argv in (["verify", "--bogus"], ["train", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_info_prints_brackets_verbatim(capsys):
    from cxr.core.progress import info, set_quiet

    set_quiet(False)
    info("label [Edema] auroc [0.9, 1.0]")
    assert "label [Edema] auroc [0.9, 1.0]" in capsys.readouterr().out


def test_torch_free_commands_do_not_import_torch(tmp_path):
    """demo, verify (--deep too), manifest, reports and download run without importing torch
    (tests/test_layering.py checks every import in their reach, function-level ones too)."""
    import os
    import socket

    code = (
        "import sys; from cxr.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(3 if 'torch' in sys.modules else rc)"
    )
    raw, data = tmp_path / "raw", tmp_path / "data"
    manifest = data / "processed" / "manifest.parquet"
    with socket.socket() as s:  # a local port nothing listens on: the download fails at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PHYSIONET_USERNAME": "u",
        "PHYSIONET_PASSWORD": "p",
    }
    for argv, expected in (
        (["demo", "--out", raw, "--n-patients", "6"], 0),
        (["verify", "--raw", raw], 0),
        (["--data-dir", data, "manifest", "--raw", raw], 0),
        (["verify", "--raw", raw, "--manifest", manifest, "--deep"], 0),
        (["--data-dir", data, "reports", "--raw", raw], 0),
        (["--data-dir", data, "download", "metadata", "--base-url", closed, "--retries", "0"], 1),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", code, "--quiet", *map(str, argv)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == expected, (
            f"{argv[0]}: rc {proc.returncode} (3 = torch imported) {proc.stderr}"
        )

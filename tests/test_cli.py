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
    """demo, verify (--deep too), manifest and reports run without importing torch."""
    code = (
        "import sys; from cxr.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(3 if 'torch' in sys.modules else rc)"
    )
    raw, data = tmp_path / "raw", tmp_path / "data"
    manifest = data / "processed" / "manifest.parquet"
    for argv in (
        ["demo", "--out", raw, "--n-patients", "6"],
        ["verify", "--raw", raw],
        ["--data-dir", data, "manifest", "--raw", raw],
        ["verify", "--raw", raw, "--manifest", manifest, "--deep"],
        ["--data-dir", data, "reports", "--raw", raw],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", code, "--quiet", *map(str, argv)], capture_output=True, text=True
        )
        assert proc.returncode == 0, (
            f"{argv[0]}: rc {proc.returncode} (3 = torch imported) {proc.stderr}"
        )

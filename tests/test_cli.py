"""The CLI shell: help works, and torch-free commands stay torch-free."""

import subprocess
import sys
from pathlib import Path

import pytest


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


def test_global_options_are_accepted_before_and_after_the_command(tmp_path, monkeypatch):
    from cxr.cli import parse

    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    before = parse(["--data-dir", "A", "--quiet", "preprocess", "--size", "64"])
    after = parse(["preprocess", "--size", "64", "--data-dir", "A", "-q"])
    nested = parse(["download", "metadata", "--data-dir", "A", "--quiet"])
    for args in (before, after, nested):
        assert args.paths.root == Path("A") and args.paths.source == "--data-dir"
        assert args.quiet is True
    # given twice, the one after the command wins; given nowhere, the default root
    assert parse(["--data-dir", "A", "verify", "--data-dir", "B"]).paths.root == Path("B")
    default = parse(["verify"])
    assert default.paths.root == Path("data") and not default.paths.given
    assert default.quiet is False
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    env = parse(["verify"]).paths
    assert env.root == tmp_path and env.source == "$CXR_DATA_DIR" and env.given


def test_mistyped_commands_options_and_choices_get_a_suggestion(capsys):
    from cxr.cli import main

    for argv, hint in (
        (["trian"], "did you mean 'train'?"),
        (["verify", "--dep"], "--dep (did you mean --deep?)"),
        (["evaluate", "--checkpoint", "x", "--split", "tst"], "did you mean 'test'?"),
        (["download", "subset", "--wokers", "2"], "--wokers (did you mean --workers?)"),
        (["preprocess", "--sise", "64"], "--sise (did you mean --size?)"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert hint in err, (argv, err)


def test_train_config_keys_given_as_options_say_how_to_write_them(capsys):
    from cxr.cli import main

    for argv, written in (
        (["train", "--epochs", "2"], "`cxr train epochs=2`"),
        (["train", "--config", "c.toml", "--image-size=128"], "`cxr train image_size=128`"),
        (["train", "--augment.rotation", "5"], "`cxr train augment.rotation=5`"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert written in err and "KEY=VALUE" in err, err


def test_print_config_shows_every_key_with_its_default_and_meaning(capsys):
    import dataclasses
    import tomllib

    from cxr.cli import main
    from cxr.training.config import (
        KEY_HELP,
        AugmentConfig,
        TrainConfig,
        config_to_dict,
        load_train_config,
    )

    config = Path(__file__).resolve().parents[1] / "configs" / "densenet121-224.toml"
    assert main(["train", "--print-config", "--config", str(config), "epochs=3"]) == 0
    text = capsys.readouterr().out
    # a valid config: it reads back as exactly the resolved configuration
    resolved = load_train_config(config, ["epochs=3"])
    assert tomllib.loads(text) == config_to_dict(resolved)
    assert "epochs = 3  # default 20: " in text
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("policy", "augment")]
    keys += [f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)]
    keys += ["policy.uncertain", "policy.missing", "policy.overrides"]
    assert sorted(KEY_HELP) == sorted(keys)  # every key has a meaning, and only keys do
    for key in keys:
        if key != "policy.overrides":
            name = key.rsplit(".", 1)[-1]
            lines = [ln for ln in text.splitlines() if ln.startswith(f"{name} = ")]
            assert lines and "# default " in lines[0] and KEY_HELP[key] in lines[0], key


def test_every_option_has_help_and_shows_its_default():
    import argparse

    from cxr.cli import DESCRIPTION, HelpFormatter, _leaf_parsers, build_parser

    parser = build_parser()
    for name in parser.cxr_commands:
        assert name in DESCRIPTION  # the top-level description names every command
    for leaf in _leaf_parsers(parser):
        formatter = HelpFormatter(leaf.prog)
        for action in leaf._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{leaf.prog} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), (
                    f"{leaf.prog} {action.option_strings[0]}: default not shown"
                )


def test_missing_inputs_name_the_command_that_makes_them_and_the_data_root(
    tmp_path, monkeypatch, capsys
):
    from cxr.cli import main

    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "elsewhere"
    cases = (
        (["--data-dir", str(root), "verify"], "raw data directory not found", "`cxr demo`"),
        (["preprocess", "--data-dir", str(root)], "manifest not found", "`cxr manifest`"),
        (["--data-dir", str(root), "train"], "manifest not found", "`cxr manifest`"),
        (["evaluate", "--checkpoint", "models/x/best.pt"], "checkpoint not found", "`cxr train"),
        (["predict", "--checkpoint", "x.pt", "in.png"], "checkpoint not found", "`cxr train"),
        (["compare", "reports/a", "reports/b"], "metrics.json of an evaluation", "`cxr evaluate"),
    )
    for argv, what, make in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and make in err, err
    # under the data root, the message says which root was in force and where it came from
    assert main(["--data-dir", str(root), "verify"]) == 1
    assert f"[data root {root.resolve()} (--data-dir)]" in capsys.readouterr().err
    monkeypatch.setenv("CXR_DATA_DIR", str(root))
    assert main(["verify"]) == 1
    assert f"[data root {root.resolve()} ($CXR_DATA_DIR)]" in capsys.readouterr().err
    monkeypatch.delenv("CXR_DATA_DIR")
    assert main(["manifest"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data'} (the default: no --data-dir" in err
    assert main(["evaluate", "--checkpoint", "models/x/best.pt"]) == 1
    assert f"[looked in {tmp_path / 'models/x/best.pt'}]" in capsys.readouterr().err


def test_ctrl_c_on_a_resumable_command_says_rerunning_resumes(monkeypatch, capsys):
    import cxr.commands.download as download_cmd
    import cxr.commands.preprocess as preprocess_cmd
    import cxr.commands.train as train_cmd
    from cxr.cli import main

    def interrupted(args):
        raise KeyboardInterrupt

    for module in (preprocess_cmd, train_cmd, download_cmd):
        monkeypatch.setattr(module, "run", interrupted)
    assert main(["preprocess", "--size", "64"]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err
    assert main(["train", "--config", "c.toml", "--out", "models/r"]) == 130
    err = capsys.readouterr().err
    assert "`cxr train --resume --config c.toml --out models/r` continues" in err
    assert main(["download", "subset"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err

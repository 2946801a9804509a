"""Demo data never passes for real: verify, manifest and train say "synthetic demo data" when
their input came from `cxr demo`, and stay silent on other data."""

from __future__ import annotations

import json

from cxr.cli import main
from rawtables import make_frames, write_raw

NOTE = "synthetic demo data"


def test_verify_and_manifest_say_synthetic_demo_data(demo_raw, tmp_path, capsys):
    assert main(["verify", "--raw", str(demo_raw)]) == 0
    out = capsys.readouterr().out
    assert NOTE in out and "all checks passed (synthetic demo data)" in out
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "manifest", "--raw", str(demo_raw)]) == 0
    assert NOTE in capsys.readouterr().out
    info = json.loads((data / "processed" / "manifest.json").read_text())
    assert info["synthetic_demo"] is True


def test_real_looking_data_gets_no_note(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    assert main(["--data-dir", str(tmp_path / "d"), "manifest", "--raw", str(raw)]) == 0
    assert NOTE not in capsys.readouterr().out
    info = json.loads((tmp_path / "d" / "processed" / "manifest.json").read_text())
    assert info["synthetic_demo"] is False
    main(["verify", "--raw", str(raw)])
    assert NOTE not in capsys.readouterr().out


def test_train_says_synthetic_demo_data(tmp_path, capsys):
    from train_fixtures import make_fixture

    manifest, cache = make_fixture(tmp_path / "d", size=32)
    tiny = ["model=cxr_small", "image_size=32", "epochs=1", "limit_train_batches=1", "prefetch=0"]
    argv = ["train", *tiny, f"manifest={manifest}", f"cache={cache}"]
    assert main([*argv, "--out", str(tmp_path / "real")]) == 0
    assert NOTE not in capsys.readouterr().out
    info = json.loads((manifest.parent / "manifest.json").read_text())
    (manifest.parent / "manifest.json").write_text(json.dumps({**info, "synthetic_demo": True}))
    assert main([*argv, "--out", str(tmp_path / "demo")]) == 0
    assert NOTE in capsys.readouterr().out

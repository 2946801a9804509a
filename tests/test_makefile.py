"""The Makefile's targets follow each other: `make train` trains into a run named after its config
(resuming one that exists), and `make evaluate` scores the run trained last. Checked with
`make -n`, which prints the commands without running them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> list[str]:
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if "cxr " in line or "last-run" in line]


def test_evaluate_scores_what_train_just_produced(tmp_path):
    last = tmp_path / "last-run"
    reference = "TRAIN_CONFIG=configs/densenet121-224.toml"
    lines = dry_run("train", reference, f"LAST_RUN={last}")
    assert any(
        "train --config configs/densenet121-224.toml --out models/densenet121-224" in ln
        for ln in lines
    )
    assert any(f"echo models/densenet121-224 > {last}" in ln for ln in lines)
    # what that train records, evaluate scores: not the demo model
    last.write_text("models/densenet121-224\n")
    (line,) = [ln for ln in dry_run("evaluate", f"LAST_RUN={last}") if " evaluate " in ln]
    assert "--checkpoint models/densenet121-224/best.pt --out reports/densenet121-224" in line
    # nothing trained yet: the demo's run
    (line,) = [
        ln for ln in dry_run("evaluate", f"LAST_RUN={tmp_path / 'none'}") if " evaluate " in ln
    ]
    assert "--checkpoint models/demo/best.pt --out reports/demo" in line


def test_train_resumes_a_run_that_exists(tmp_path):
    run = tmp_path / "models" / "demo"
    (line,) = [ln for ln in dry_run("train", f"RUN={run}") if " train " in ln]
    assert "--resume" not in line
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    (line,) = [ln for ln in dry_run("train", f"RUN={run}") if " train " in ln]
    assert line.rstrip().endswith(f"--out {run} --resume")


def test_real_data_runs_the_data_guide_in_order():
    steps = [ln.split("cxr ", 1)[1].split()[0:2] for ln in dry_run("real-data") if "cxr " in ln]
    assert steps == [
        ["download", "metadata"],
        ["manifest", "--raw"],
        ["download", "subset"],
        ["verify", "--raw"],
        ["manifest", "--raw"],  # again, now with the reports' sections
    ]

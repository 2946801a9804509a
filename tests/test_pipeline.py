"""The real CLI end to end on a small demo tree, and the privacy guarantee over everything it
printed or wrote outside data/ (and in the reports table, which leaves data/ in practice)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cxr import schema


def cxr(*args, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cxr", *map(str, args)], cwd=cwd, capture_output=True, text=True
    )
    return proc


def subject_ids(raw: Path) -> set[str]:
    with gzip.open(raw / f"{schema.SPLIT_CSV}.gz", "rt") as f:
        return set(pl.read_csv(f, infer_schema=False)["subject_id"].to_list())


def assert_private(subjects: set[str], texts: dict[str, str]) -> None:
    for where, text in texts.items():
        leaked = [s for s in subjects if s in text]
        assert not leaked, f"subject_id {leaked[0]} appears in {where}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    printed: dict[str, str] = {}

    def step(name, *args, ok=True):
        proc = cxr(*args, cwd=work)
        printed[name] = proc.stdout + proc.stderr
        if ok:
            assert proc.returncode == 0, f"{name}: {proc.stderr}"
        return proc

    step("demo", "demo", "--n-patients", 30, "--seed", 3)
    step("verify", "verify")
    step("manifest", "manifest", "--n-studies", 150)
    step("verify-manifest", "verify", "--manifest", "data/processed/manifest.parquet")
    step("reports", "reports", "--csv", "sectioned.csv")
    return work, printed


def test_pipeline_outputs(pipeline):
    work, printed = pipeline
    manifest = pl.read_parquet(work / "data/processed/manifest.parquet")
    assert set(manifest["view_position"]) == {"PA"}
    assert set(manifest["split"]) == {"train", "validate", "test"}
    assert manifest["report_path"].null_count() == 0  # the demo writes every report
    assert manifest["impression"].null_count() < manifest.height
    assert "studies with labels" in printed["verify"]
    assert "all checks passed" in printed["verify-manifest"]


def test_privacy(pipeline):
    work, printed = pipeline
    subjects = subject_ids(work / "data/raw")
    texts = {f"output of cxr {k}": v for k, v in printed.items()}
    for path in work.rglob("*"):
        if path.is_file() and "raw" not in path.relative_to(work).parts:
            if path.name == "manifest.parquet":
                continue  # the manifest keeps subject_id by contract (it stays in data/)
            text = path.read_bytes().decode("latin-1")
            if path.suffix == ".parquet":
                text += pl.read_parquet(path).write_csv()
            texts[str(path.relative_to(work))] = text
    assert_private(subjects, texts)

"""The real CLI end to end on a small demo tree, and the privacy guarantee over everything it
printed or wrote outside data/ (and in the reports table, which leaves data/ in practice)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cxr.mimic import schema

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.slow  # every test here shares the whole pipeline run (minutes on 2 cores)


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
    step("preprocess", "preprocess", "--size", 128, "--workers", 2)
    step(
        "train",
        "train",
        "--config",
        CONFIGS / "demo.toml",
        "--out",
        "models/e2e",
        "epochs=2",
        "cache_size=128",
    )
    step(
        "evaluate",
        "evaluate",
        "--checkpoint",
        "models/e2e/best.pt",
        "--out",
        "reports/e2e",
        "--bootstrap",
        50,
    )
    images = sorted((work / "data/raw/files").rglob("*.jpg"))[:3]
    step(
        "predict",
        "predict",
        "--checkpoint",
        "models/e2e/best.pt",
        *images,
        "--cam",
        "--out",
        "reports/predict",
    )
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
    for name in ("best.pt", "last.pt", "config.toml", "metrics.jsonl"):
        assert (work / "models/e2e" / name).is_file()
    for name in ("metrics.json", "predictions.csv", "report.html"):
        assert (work / "reports/e2e" / name).is_file()
    assert list((work / "reports/predict").rglob("*.png"))  # Grad-CAM overlays


def test_privacy(pipeline):
    work, printed = pipeline
    subjects = subject_ids(work / "data/raw")
    texts = {f"output of cxr {k}": v for k, v in printed.items()}
    for path in work.rglob("*"):
        if path.is_file() and "raw" not in path.relative_to(work).parts:
            if path.name == "manifest.parquet":
                continue  # the manifest keeps subject_id by contract (it stays in data/)
            text = path.read_bytes().decode("latin-1")
            if path.suffix == ".pt":  # also the unpickled contents (config, metrics, names)
                import torch

                text += repr(torch.load(path, weights_only=True, map_location="cpu"))
            if path.suffix == ".parquet":
                text += pl.read_parquet(path).write_csv()
            texts[str(path.relative_to(work))] = text
    assert_private(subjects, texts)

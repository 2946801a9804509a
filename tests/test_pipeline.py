"""The real CLI end to end on a small demo tree, and the privacy guarantee over everything it
printed or wrote outside data/ (and in the reports table, which leaves data/ in practice): no
subject_id, no demographic column (so no single patient's age), and no subgroup cell under the
evaluation's --min-cell patients in metrics.json, report.html or the printed output."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cxr.mimic import schema
from cxr.mimic.demographics import AGE_GROUPS
from cxr.mimic.demographics import COLUMNS as DEMOGRAPHIC_COLUMNS

SUBGROUPS = "sex,age_group,race_group,insurance,view_position"
# Two evaluations: the default minimum (every cell of this small demo is suppressed) and a
# minimum of 3, so shown cells exist and are checked too.
MIN_CELLS = {"e2e": 20, "e2e-small-cells": 3}
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
    for name, min_cell in MIN_CELLS.items():
        step(
            f"evaluate {name}",
            "evaluate",
            "--checkpoint",
            "models/e2e/best.pt",
            "--out",
            f"reports/{name}",
            "--split",
            "test",
            "--bootstrap",
            50,
            "--subgroups",
            SUBGROUPS,
            "--min-cell",
            min_cell,
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
    for column in DEMOGRAPHIC_COLUMNS:  # the demo's MIMIC-IV files reached the manifest
        assert column in manifest.columns
    assert schema.NEGBIO_LABELLED in manifest.columns
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


def test_no_demographic_column_leaves_data(pipeline):
    """The manifest's demographic columns (a patient's age among them) appear in no file under
    models/ or reports/: no CSV column, no JSON key, no checkpoint entry."""
    work, _ = pipeline
    names = {*DEMOGRAPHIC_COLUMNS, "anchor_age", "anchor_year", "gender", "race", "dod"}
    for path in [*(work / "models").rglob("*"), *(work / "reports").rglob("*")]:
        if not path.is_file():
            continue
        if path.suffix == ".csv":
            assert not names & set(pl.read_csv(path).columns), path
        if path.suffix in (".json", ".jsonl"):
            for line in (
                path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
            ):
                keys = set(re.findall(r'"([^"]+)":', line))
                assert not keys & (names - {"sex", "age_group", "race_group", "insurance"}), path
        if path.suffix == ".pt":
            import torch

            text = repr(torch.load(path, weights_only=True, map_location="cpu"))
            assert not [n for n in names if f"'{n}'" in text], path
    # ages leave only as age groups
    for name in MIN_CELLS:
        groups = json.loads((work / "reports" / name / "metrics.json").read_text())["subgroups"]
        assert set(groups["age_group"]) <= {g for g, _, _ in AGE_GROUPS} | {"Unknown"}


def _shown_cells_html(page: str) -> list[tuple[str, int]]:
    rows = re.findall(r'<tr class="shown"><td>([^<]*)</td><td>(\d+)</td>', page)
    return [(value, int(n)) for value, n in rows]


def test_no_subgroup_cell_under_min_cell_in_any_output(pipeline):
    work, printed = pipeline
    for name, min_cell in MIN_CELLS.items():
        out = work / "reports" / name
        m = json.loads((out / "metrics.json").read_text())
        assert m["subgroup_options"]["min_cell"] == min_cell
        shown = suppressed = 0
        for values in m["subgroups"].values():
            for entry in values.values():
                if entry["suppressed"]:
                    suppressed += 1
                    assert {k: v for k, v in entry.items() if k != "suppressed"} == dict.fromkeys(
                        ("patients", "studies", "underdiagnosis", "labels")
                    )
                else:
                    shown += 1
                    assert entry["patients"] >= min_cell
        for attribute, gaps in m["subgroup_gaps"].items():
            shown_values = {v for v, e in m["subgroups"][attribute].items() if not e["suppressed"]}
            for gap in [gaps["underdiagnosis"], *gaps["auroc"].values()]:
                if gap:
                    assert {gap["higher"], gap["lower"]} <= shown_values
        page = (out / "report.html").read_text()
        cells = _shown_cells_html(page)
        assert len(cells) == shown and all(n >= min_cell for _, n in cells)
        assert page.count('<tr class="suppressed">') == suppressed
        lines = printed[f"evaluate {name}"].splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("subgroups ("))
        for line in lines[start + 1 :]:
            m_line = re.match(r"^  (.+?)\s+(\d+)\s+(\d+)\s", line)
            if m_line:
                assert int(m_line.group(2)) >= min_cell, line
    # the small demo's test split: nothing reaches 20 patients; at 3 some cells are shown
    default = json.loads((work / "reports/e2e/metrics.json").read_text())["subgroups"]
    assert all(e["suppressed"] for v in default.values() for e in v.values())
    small = json.loads((work / "reports/e2e-small-cells/metrics.json").read_text())["subgroups"]
    assert any(not e["suppressed"] for v in small.values() for e in v.values())

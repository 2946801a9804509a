"""The synthetic tree: real layout, schemas and semantics, determinism, planted signal."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import math
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.core.errors import CxrError
from cxr.mimic import schema
from cxr.mimic.demo import (
    ADMISSIONS_COLUMNS,
    DEFAULT_PATIENTS,
    FAINT_LABELS,
    LABEL_KEYWORDS,
    MIN_POSITIVES,
    PATIENTS_COLUMNS,
    PHRASES,
    RADIOLOGIST_COLUMNS,
    _geometry,
    _plan,
    write_demo,
)
from cxr.mimic.radiologist import read_radiologist_labels

LABEL_TEXT = {"1.0", "0.0", "-1.0", ""}


def read_gz_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open("rb") as fh:
        assert fh.read(2) == b"\x1f\x8b", f"{path.name} is not gzipped"
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r, strict=True)) for r in reader]
    return header, rows


@pytest.fixture(scope="module")
def tables(demo_raw):
    return {
        name: read_gz_csv(demo_raw / f"{csv_name}.gz")
        for name, csv_name in (
            ("chexpert", schema.CHEXPERT_CSV),
            ("split", schema.SPLIT_CSV),
            ("metadata", schema.METADATA_CSV),
        )
    }


def test_csv_columns_exactly_as_real(tables):
    assert tables["chexpert"][0] == list(schema.CHEXPERT_COLUMNS)
    assert tables["split"][0] == list(schema.SPLIT_COLUMNS)
    assert tables["metadata"][0] == list(schema.METADATA_COLUMNS)
    assert len(schema.METADATA_COLUMNS) == 12 and len(schema.CHEXPERT_COLUMNS) == 16


def test_ids_have_real_shapes_and_are_unique(tables):
    meta = tables["metadata"][1]
    assert all(schema.SUBJECT_ID_RE.match(r["subject_id"]) for r in meta)
    assert all(schema.STUDY_ID_RE.match(r["study_id"]) for r in meta)
    assert all(schema.DICOM_ID_RE.match(r["dicom_id"]) for r in meta)
    dicoms = [r["dicom_id"] for r in meta]
    assert len(set(dicoms)) == len(dicoms)
    owner: dict[str, set[str]] = defaultdict(set)
    for r in meta:
        owner[r["study_id"]].add(r["subject_id"])
    assert all(len(v) == 1 for v in owner.values())
    # ids are random, not ordered by time
    studies = sorted({(r["subject_id"], r["study_id"], r["StudyDate"]) for r in meta})
    assert sorted(studies, key=lambda s: s[1]) != sorted(studies, key=lambda s: (s[2], s[1]))


def test_dates_and_times(tables):
    per_study: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for r in tables["metadata"][1]:
        assert re.fullmatch(r"2[12]\d{6}", r["StudyDate"]), r["StudyDate"]
        assert 2100 <= int(r["StudyDate"][:4]) <= 2200
        t = float(r["StudyTime"])
        assert r["StudyTime"] == repr(t)  # a float, as pandas writes it, no zero padding
        hhmmss = f"{int(t):06d}"
        assert int(hhmmss[:2]) < 24 and int(hhmmss[2:4]) < 60 and int(hhmmss[4:]) < 60
        per_study[r["study_id"]].add((r["StudyDate"], r["StudyTime"]))
    assert all(len(v) == 1 for v in per_study.values())
    assert any(not r["StudyTime"].startswith(("1", "2")) for r in tables["metadata"][1])


def test_views_and_code_meanings_consistent(tables, demo_summary):
    meta = tables["metadata"][1]
    allowed = set(schema.VIEW_CODE_MEANINGS) | {""}
    meanings = set(schema.VIEW_CODE_MEANINGS.values())
    recoverable = unrecoverable = 0
    for r in meta:
        vp, code = r["ViewPosition"], r["ViewCodeSequence_CodeMeaning"]
        assert vp in allowed
        if vp:
            assert code == schema.VIEW_CODE_MEANINGS[vp]
        else:
            assert code in meanings or code == ""
            recoverable += code != ""
            unrecoverable += code == ""
        assert r["PatientOrientationCodeSequence_CodeMeaning"] in {"Erect", "Recumbent", ""}
        assert r["PerformedProcedureStepDescription"].startswith("CHEST (")
        assert r["ProcedureCodeSequence_CodeMeaning"].startswith("CHEST (")
    assert recoverable > 0 and unrecoverable > 0
    assert recoverable == demo_summary.recoverable_missing_views
    counts = Counter(r["ViewPosition"] for r in meta)
    assert counts["PA"] > counts["LATERAL"] > 0 and counts["AP"] > 0 and counts["LL"] > 0
    assert set(counts) & {"LAO", "RAO", "AP AXIAL", "PA LLD", "SWIMMERS"}
    assert dict(counts) == demo_summary.views


def test_images_exist_grayscale_with_metadata_sizes(demo_raw, tables):
    meta = tables["metadata"][1]
    for r in meta:
        path = demo_raw / schema.image_relpath(
            int(r["subject_id"]), int(r["study_id"]), r["dicom_id"]
        )
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (int(r["Columns"]), int(r["Rows"]))
        if r["ViewPosition"] == "PA":
            assert (int(r["Rows"]), int(r["Columns"])) == (256, 213)
    jpegs = {p.relative_to(demo_raw).as_posix() for p in (demo_raw / "files").rglob("*.jpg")}
    assert len(jpegs) == len(meta)


def test_real_geometry_at_real_size():
    rng = np.random.default_rng(0)
    assert _geometry("PA", 3056, rng) == (3056, 2544)


def test_split_patient_disjoint_and_matches_metadata(tables, demo_summary):
    split, meta = tables["split"][1], tables["metadata"][1]
    assert {r["split"] for r in split} == set(schema.SPLITS)
    assert {r["dicom_id"] for r in split} == {r["dicom_id"] for r in meta}
    by_dicom = {r["dicom_id"]: (r["study_id"], r["subject_id"]) for r in meta}
    assert all(by_dicom[r["dicom_id"]] == (r["study_id"], r["subject_id"]) for r in split)
    splits_of: dict[str, set[str]] = defaultdict(set)
    for r in split:
        splits_of[r["subject_id"]].add(r["split"])
    assert all(len(v) == 1 for v in splits_of.values())
    assert sum(demo_summary.images.values()) == len(split)


def test_label_semantics(tables, demo_summary):
    rows = tables["chexpert"][1]
    keys = [(r["subject_id"], r["study_id"]) for r in rows]
    assert len(set(keys)) == len(keys)
    findings = [n for n in schema.LABELS if n not in (schema.NO_FINDING, schema.SUPPORT_DEVICES)]
    coexist = 0
    for r in rows:
        assert all(r[n] in LABEL_TEXT for n in schema.LABELS)
        assert r[schema.NO_FINDING] in {"1.0", ""}
        abnormal = any(r[n] in {"1.0", "-1.0"} for n in findings)
        all_blank = all(r[n] == "" for n in schema.LABELS)
        if not all_blank:
            assert (r[schema.NO_FINDING] == "1.0") == (not abnormal), r["study_id"]
        coexist += r[schema.NO_FINDING] == "1.0" and r[schema.SUPPORT_DEVICES] == "1.0"
    assert coexist > 0
    split_studies = {int(r["study_id"]) for r in tables["split"][1]}
    labelled = {int(r["study_id"]) for r in rows}
    missing = split_studies - labelled
    assert missing and missing == demo_summary.missing_label_studies
    blank = {int(r["study_id"]) for r in rows if all(r[n] == "" for n in schema.LABELS)}
    assert blank and blank == demo_summary.blank_label_studies
    # test is enriched for abnormal studies
    split_of = {int(r["study_id"]): r["split"] for r in tables["split"][1]}
    normal = Counter(split_of[int(r["study_id"])] for r in rows if r[schema.NO_FINDING] == "1.0")
    total = Counter(split_of[int(r["study_id"])] for r in rows)
    assert normal["test"] / total["test"] < normal["train"] / total["train"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_size_guarantees_usable_pa_splits(seed):
    studies = _plan(seed, DEFAULT_PATIENTS)
    for split in ("validate", "test"):
        pa = [
            s
            for s in studies
            if s.split == split and s.has_row and any(i.view_position == "PA" for i in s.images)
        ]
        assert len(pa) >= 60
        for name in schema.LABELS:
            assert sum(s.labels[name] == 1.0 for s in pa) >= MIN_POSITIVES >= 10, (split, name)
    pa_images = sum(i.view_position == "PA" for s in studies for i in s.images)
    assert pa_images >= 500


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_test_split_has_fifty_patients_with_several_studies(seed):
    """Enough patients for subgroup cells of 20 (both sexes balanced), several studies each so
    patient and study intervals differ as they do on MIMIC-CXR's test split."""
    studies = _plan(seed, DEFAULT_PATIENTS)
    per_patient: dict[int, list] = defaultdict(list)
    for s in studies:
        if s.split == "test":
            per_patient[s.subject_id].append(s)
    assert len(per_patient) >= 50
    assert all(len(v) >= 2 for v in per_patient.values())
    assert np.mean([len(v) for v in per_patient.values()]) >= 3
    sexes = Counter(v[0].sex for v in per_patient.values())
    assert set(sexes) == {"F", "M"} and min(sexes.values()) >= 25


def test_findings_persist_across_a_patients_studies():
    studies = _plan(0, DEFAULT_PATIENTS)
    findings = [n for n in schema.LABELS if n not in (schema.NO_FINDING, schema.SUPPORT_DEVICES)]

    def positive(s) -> np.ndarray:
        return np.array([s.labels[n] == 1.0 for n in findings])

    by_patient: dict[int, list] = defaultdict(list)
    for s in studies:
        by_patient[s.subject_id].append(s)
    consecutive = [
        (positive(a), positive(b))
        for own in by_patient.values()
        for a, b in itertools.pairwise(own)
    ]
    rng = np.random.default_rng(0)
    others = [
        (positive(studies[int(i)]), positive(studies[int(j)]))
        for i, j in rng.integers(len(studies), size=(2000, 2))
        if studies[int(i)].subject_id != studies[int(j)].subject_id
    ]

    def kept(pairs) -> float:
        # P(a finding positive in one study is positive in the other)
        both = sum((a & b).sum() for a, b in pairs)
        return both / sum(a.sum() for a, _ in pairs)

    assert kept(consecutive) > kept(others) + 0.3, (kept(consecutive), kept(others))


def _report_files(demo_raw: Path, meta) -> dict[int, Path]:
    out = {}
    for r in meta:
        subject, study = int(r["subject_id"]), int(r["study_id"])
        found = [
            demo_raw / p for p in schema.report_relpaths(subject, study) if (demo_raw / p).exists()
        ]
        assert len(found) == 1, study
        out[study] = found[0]
    return out


def test_report_format_and_locations(demo_raw, tables, demo_summary):
    reports = _report_files(demo_raw, tables["metadata"][1])
    assert set(reports) == set(demo_summary.reports)
    official = sum(not p.parent.name.startswith("s") for p in reports.values())
    assert 0 < official < len(reports)  # both places used
    centred = re.compile(r"^ {20,}FINAL (REPORT|ADDENDUM)$")
    for study, path in reports.items():
        text = path.read_text()
        lines = text.rstrip("\n").split("\n")
        assert centred.match(lines[0]), path
        assert " " * 33 + "FINAL REPORT" in lines
        assert all(ln.startswith(" ") for ln in lines[1:]), path
        assert all(len(ln) <= 79 for ln in lines), path
        flat = " ".join(text.split())
        for key, section in demo_summary.reports[study].items():
            assert " ".join(section.split()) in flat, (study, key)
        if lines[0].endswith("ADDENDUM"):
            assert " " + "_" * 78 in lines
    headers = {h for hs in demo_summary.report_headers.values() for h in hs}
    assert {"INDICATION", "FINDINGS", "IMPRESSION"} <= headers
    assert headers & {"CLINICAL HISTORY", "REASON FOR EXAMINATION", "NDICATION", "HISTORY"}
    assert headers & {"IMPRESSON", "CONCLUSION"}
    assert "ADDENDUM" in headers
    bare = [s for s, sec in demo_summary.reports.items() if "last_paragraph" in sec]
    assert bare and all(
        "findings" not in demo_summary.reports[s] and "impression" not in demo_summary.reports[s]
        for s in bare
    )
    assert any("___" in p.read_text() for p in reports.values())


def test_report_text_agrees_with_labels(demo_raw, tables, demo_summary):
    reports = _report_files(demo_raw, tables["metadata"][1])
    rows = {int(r["study_id"]): r for r in tables["chexpert"][1]}
    for study, path in reports.items():
        text = " ".join(path.read_text().split())
        low = text.lower()
        row = rows.get(study)
        for name in schema.LABELS:
            value = row[name] if row else ""
            mentioned = any(k in low for k in LABEL_KEYWORDS[name])
            if value == "":
                assert not mentioned, (study, name)
                continue
            assert mentioned, (study, name)
            if name == schema.NO_FINDING:
                continue
            kind = {"1.0": 0, "0.0": 1, "-1.0": 2}[value]
            pats = [
                re.escape(p)
                .replace(r"\{side\}", r"(right|left)")
                .replace(r"\{Side\}", r"(Right|Left)")
                for p in PHRASES[name][kind]
            ]
            assert any(re.search(p, text, re.IGNORECASE) for p in pats), (study, name, value)


def test_sha256sums(demo_raw):
    lines = (demo_raw / schema.SHA256SUMS).read_text().splitlines()
    paths = [ln.split(" ", 1)[1] for ln in lines]
    assert paths == sorted(paths, key=lambda p: p.encode())
    jpegs = {p.relative_to(demo_raw).as_posix() for p in (demo_raw / "files").rglob("*.jpg")}
    csvs = {f"{c}.gz" for c in (*schema.REQUIRED_CSVS, schema.NEGBIO_CSV)}
    csvs |= {schema.RADIOLOGIST_CSV}
    assert set(paths) == jpegs | csvs  # MIMIC-IV's files have their own listing
    for ln in lines:
        digest, rel = ln.split(" ", 1)
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert hashlib.sha256((demo_raw / rel).read_bytes()).hexdigest() == digest


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_deterministic_per_seed(tmp_path, make_demo):
    a = _tree_bytes((make_demo(tmp_path / "a", n_patients=6, seed=3, image_size=64)).out_dir)
    b = _tree_bytes((make_demo(tmp_path / "b", n_patients=6, seed=3, image_size=64)).out_dir)
    c = _tree_bytes((make_demo(tmp_path / "c", n_patients=6, seed=4, image_size=64)).out_dir)
    assert a == b
    assert a.keys() != c.keys()
    assert a[schema.RADIOLOGIST_CSV] != c[schema.RADIOLOGIST_CSV]
    with gzip.open(io.BytesIO(a[f"{schema.SPLIT_CSV}.gz"])) as fh:
        assert fh.read().startswith(b"dicom_id,study_id,subject_id,split\n")


def test_rerun_replaces_a_demo_tree_and_refuses_other_dirs(tmp_path, make_demo):
    out = tmp_path / "raw"
    make_demo(out, n_patients=5, seed=1, image_size=48)
    first = _tree_bytes(out)
    make_demo(out, n_patients=4, seed=2, image_size=48)
    make_demo(out, n_patients=5, seed=1, image_size=48)
    assert _tree_bytes(out) == first
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CxrError, match="not empty"):
        write_demo(other, n_patients=5, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(CxrError):
        write_demo(tmp_path / "x", n_patients=2, progress=False)


def _pa_means(demo_raw, tables, region):
    """Mean pixel value of a region (fractions y0, y1, x0, x1) per PA image, with its labels."""
    labels = {int(r["study_id"]): r for r in tables["chexpert"][1]}
    out = []
    for r in tables["metadata"][1]:
        if r["ViewPosition"] != "PA" or int(r["study_id"]) not in labels:
            continue
        p = demo_raw / schema.image_relpath(int(r["subject_id"]), int(r["study_id"]), r["dicom_id"])
        a = np.asarray(Image.open(p), dtype=np.float32)
        h, w = a.shape
        y0, y1, x0, x1 = region
        out.append(
            (
                a[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].mean(),
                labels[int(r["study_id"])],
            )
        )
    return out


@pytest.mark.parametrize(
    ("label", "region", "sign"),
    [
        ("Cardiomegaly", (0.56, 0.68, 0.4, 0.7), 1),
        ("Pleural Effusion", (0.66, 0.74, 0.2, 0.4), 1),
        ("Pneumothorax", (0.2, 0.3, 0.78, 0.82), -1),
        ("Lung Lesion", (0.44, 0.5, 0.3, 0.36), 1),
    ],
)
def test_planted_signals_are_strong(demo_raw, tables, label, region, sign):
    means = _pa_means(demo_raw, tables, region)
    pos = [m for m, r in means if r[label] == "1.0"]
    neg = [m for m, r in means if r[label] in ("0.0", "")]
    assert len(pos) >= 3 and len(neg) >= 3
    assert sign * (np.mean(pos) - np.mean(neg)) > 15, (np.mean(pos), np.mean(neg))


def test_cli_demo_prints_summary_without_subject_ids(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr",
            "--data-dir",
            str(data),
            "demo",
            "--n-patients",
            "5",
            "--image-size",
            "48",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "validate" in proc.stdout and "views" in proc.stdout
    assert "test studies with radiologist labels" in proc.stdout
    assert "studies with NegBio labels" in proc.stdout and "MIMIC-IV 3.1" in proc.stdout
    raw = data / "raw"
    _, meta = read_gz_csv(raw / f"{schema.METADATA_CSV}.gz")
    for subject in {r["subject_id"] for r in meta}:
        assert subject not in proc.stdout + proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "cxr", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_no_finding_blank_labels_have_nan_in_summary(demo_summary):
    for study in demo_summary.blank_label_studies:
        assert all(math.isnan(v) for v in demo_summary.labels[study].values())


# ------------------------------------------------------------------- radiologist-labelled test set


def _pa_studies_by_split(tables) -> dict[str, set[int]]:
    pa = {int(r["study_id"]) for r in tables["metadata"][1] if r["ViewPosition"] == "PA"}
    out: dict[str, set[int]] = defaultdict(set)
    for r in tables["split"][1]:
        if int(r["study_id"]) in pa:
            out[r["split"]].add(int(r["study_id"]))
    return out


def test_radiologist_file_as_physionet_ships_it(demo_raw, demo_summary):
    path = demo_raw / schema.RADIOLOGIST_CSV
    data = path.read_bytes()
    assert not data.startswith(b"\x1f\x8b")  # plain CSV, not gzipped
    reader = csv.reader(io.StringIO(data.decode()))
    header, *rows = list(reader)
    assert header == list(RADIOLOGIST_COLUMNS)
    assert header[0] == "study_id" and "subject_id" not in header
    # the chexpert file's order, with Lung Opacity under its radiologist name
    assert header[1:] == ["Airspace Opacity" if n == "Lung Opacity" else n for n in schema.LABELS]
    assert rows and all(v in LABEL_TEXT for r in rows for v in r[1:])
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
    got = read_radiologist_labels(path)
    assert got.missing_labels == () and got.table.height == len(rows)
    assert got.study_ids == set(demo_summary.radiologist_labels)
    for study, *values in got.table.iter_rows():
        want = demo_summary.radiologist_labels[study]
        for name, v in zip(schema.LABELS, values, strict=True):
            assert (math.isnan(v) and math.isnan(want[name])) or v == want[name], (study, name)


def test_radiologist_file_covers_about_half_of_the_pa_test_studies(demo_raw, tables):
    covered = read_radiologist_labels(demo_raw / schema.RADIOLOGIST_CSV).study_ids
    pa = _pa_studies_by_split(tables)
    assert covered <= pa["test"]  # test studies only, each with a PA image
    assert 0.4 <= len(covered) / len(pa["test"]) <= 0.6, (len(covered), len(pa["test"]))


def test_radiologist_labels_disagree_with_chexpert_in_some_cells_only(demo_raw, tables):
    chexpert = {int(r["study_id"]): r for r in tables["chexpert"][1]}
    with (demo_raw / schema.RADIOLOGIST_CSV).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    findings = [n for n in schema.LABELS if n not in (schema.NO_FINDING, schema.SUPPORT_DEVICES)]
    differ = cells = 0
    kinds = Counter()
    for r in rows:
        r["Lung Opacity"] = r.pop("Airspace Opacity")
        theirs = chexpert[int(r["study_id"])]
        for name in schema.LABELS:
            cells += 1
            if r[name] != theirs[name]:
                differ += 1
                kinds[(theirs[name], r[name])] += 1
        # No Finding stays consistent: 1 exactly when no finding is 1 or -1, else blank
        abnormal = any(r[n] in {"1.0", "-1.0"} for n in findings)
        assert r[schema.NO_FINDING] == ("" if abnormal else "1.0"), r["study_id"]
    assert 0.03 <= differ / cells <= 0.25, (differ, cells)
    assert kinds[("-1.0", "1.0")] + kinds[("-1.0", "0.0")] > 0  # uncertainty resolved
    assert kinds[("1.0", "0.0")] + kinds[("", "0.0")] + kinds[("", "1.0")] > 0


def test_radiologist_file_is_listed_in_sha256sums(demo_raw):
    sums = dict(
        reversed(ln.split(" ", 1)) for ln in (demo_raw / schema.SHA256SUMS).read_text().splitlines()
    )
    data = (demo_raw / schema.RADIOLOGIST_CSV).read_bytes()
    assert sums[schema.RADIOLOGIST_CSV] == hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def default_tables(tmp_path_factory):
    """The CSVs of a demo at the default size and seed (tiny images: only the tables matter)."""
    out = tmp_path_factory.mktemp("demo-default") / "raw"
    write_demo(out, image_size=16, progress=False)
    return {
        name: read_gz_csv(out / f"{csv_name}.gz")
        for name, csv_name in (
            ("chexpert", schema.CHEXPERT_CSV),
            ("split", schema.SPLIT_CSV),
            ("metadata", schema.METADATA_CSV),
        )
    }


def test_default_demo_has_ten_positive_pa_studies_per_label_in_test(default_tables):
    pa = _pa_studies_by_split(default_tables)
    labels = {int(r["study_id"]): r for r in default_tables["chexpert"][1]}
    for split in ("validate", "test"):
        assert len(pa[split]) >= 60, split
        for name in schema.LABELS:
            positives = sum(labels[s][name] == "1.0" for s in pa[split] if s in labels)
            assert positives >= 10, (split, name, positives)


# ------------------------------------------------------------------- NegBio and MIMIC-IV


def test_negbio_file_as_physionet_ships_it(demo_raw, tables, demo_summary):
    header, rows = read_gz_csv(demo_raw / f"{schema.NEGBIO_CSV}.gz")
    assert header == list(schema.CHEXPERT_COLUMNS)  # the chexpert file's schema
    chexpert = {(r["subject_id"], r["study_id"]): r for r in tables["chexpert"][1]}
    assert {(r["subject_id"], r["study_id"]) for r in rows} == set(chexpert)
    findings = [n for n in schema.LABELS if n not in (schema.NO_FINDING, schema.SUPPORT_DEVICES)]
    differ = cells = 0
    for r in rows:
        assert all(r[n] in LABEL_TEXT for n in schema.LABELS)
        abnormal = any(r[n] in {"1.0", "-1.0"} for n in findings)
        if any(r[n] for n in schema.LABELS):
            assert r[schema.NO_FINDING] == ("" if abnormal else "1.0")
        theirs = chexpert[(r["subject_id"], r["study_id"])]
        cells += len(schema.LABELS)
        differ += sum(r[n] != theirs[n] for n in schema.LABELS)
        want = demo_summary.negbio_labels[int(r["study_id"])]
        for n in schema.LABELS:
            assert r[n] == ("" if math.isnan(want[n]) else repr(want[n])), (r["study_id"], n)
    assert 0.01 <= differ / cells <= 0.08, (differ, cells)  # a few percent


def _iv_tables(raw: Path):
    hosp = raw / "mimiciv" / "3.1" / "hosp"
    return read_gz_csv(hosp / "patients.csv.gz"), read_gz_csv(hosp / "admissions.csv.gz")


def test_mimic_iv_tables_in_the_real_layout_and_forms(demo_raw, tables, demo_summary):
    (p_header, patients), (a_header, admissions) = _iv_tables(demo_raw)
    assert (
        p_header
        == list(PATIENTS_COLUMNS)
        == [
            "subject_id",
            "gender",
            "anchor_age",
            "anchor_year",
            "anchor_year_group",
            "dod",
        ]
    )
    assert a_header == list(ADMISSIONS_COLUMNS) and "race" in a_header
    demo_subjects = {r["subject_id"] for r in tables["split"][1]}
    listed = {r["subject_id"] for r in patients}
    assert listed < demo_subjects  # some patients are missing from MIMIC-IV
    assert demo_subjects - listed == {str(s) for s in demo_summary.absent_from_mimic_iv}
    for r in patients:
        assert r["gender"] == demo_summary.sexes[int(r["subject_id"])]
        assert 18 <= int(r["anchor_age"]) <= 91 and re.fullmatch(r"2[12]\d\d", r["anchor_year"])
        assert re.fullmatch(r"20\d\d - 20\d\d", r["anchor_year_group"])
        assert r["dod"] == "" or re.fullmatch(r"2[12]\d\d-\d\d-\d\d", r["dod"])
    when = re.compile(r"2[12]\d\d-\d\d-\d\d \d\d:\d\d:00")
    hadm = [r["hadm_id"] for r in admissions]
    assert len(set(hadm)) == len(hadm) and all(re.fullmatch(r"2\d{7}", h) for h in hadm)
    per_patient: dict[str, list] = defaultdict(list)
    for r in admissions:
        assert when.fullmatch(r["admittime"]) and when.fullmatch(r["dischtime"])
        assert r["dischtime"] > r["admittime"]
        assert r["subject_id"] in listed
        per_patient[r["subject_id"]].append(r)
    assert listed - set(per_patient)  # someone in patients has no admission
    assert max(len(v) for v in per_patient.values()) >= 3
    varying = [v for v in per_patient.values() if len({a["race"] for a in v}) > 1]
    assert varying and any(len({a["insurance"] for a in v}) > 1 for v in per_patient.values())
    races = {r["race"] for r in admissions}
    assert {"WHITE", "BLACK/AFRICAN AMERICAN"} <= races and races & {"UNKNOWN", "UNABLE TO OBTAIN"}
    assert {r["insurance"] for r in admissions} <= {
        "Medicare",
        "Medicaid",
        "Private",
        "Other",
        "No charge",
        "",
    }
    sums = (demo_raw / "mimiciv" / "3.1" / schema.SHA256SUMS).read_text().splitlines()
    for line in sums:
        digest, rel = line.split(" ", 1)
        data = (demo_raw / "mimiciv" / "3.1" / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
    assert sorted(line.split(" ", 1)[1] for line in sums) == [
        "hosp/admissions.csv.gz",
        "hosp/patients.csv.gz",
    ]


def test_planted_subgroup_effect_is_fainter_on_womens_films(demo_raw, tables, demo_summary):
    """Pleural Effusion's signature (lower left of the image) is weaker for female patients."""
    assert FAINT_LABELS == {"F": ("Pleural Effusion", "Lung Opacity")}
    sex_of = {
        int(r["study_id"]): demo_summary.sexes[int(r["subject_id"])] for r in tables["split"][1]
    }
    means = _pa_means(demo_raw, tables, (0.66, 0.74, 0.2, 0.4))
    contrast = {}
    for sex in ("F", "M"):
        mine = [(m, r) for m, r in means if sex_of[int(r["study_id"])] == sex]
        pos = [m for m, r in mine if r["Pleural Effusion"] == "1.0"]
        neg = [m for m, r in mine if r["Pleural Effusion"] in ("0.0", "")]
        assert len(pos) >= 3 and len(neg) >= 3
        contrast[sex] = np.mean(pos) - np.mean(neg)
    assert contrast["M"] > 15 and contrast["F"] < 0.6 * contrast["M"], contrast

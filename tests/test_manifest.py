"""Manifest table logic and command on hand-made CSVs (each test injects one defect)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import polars as pl
import pytest

from cxr.cli import main
from cxr.core.errors import InputError
from cxr.mimic import schema
from cxr.mimic.manifest import (
    Exclusions,
    ManifestConfig,
    build_manifest,
    make_manifest,
    select_studies,
)
from cxr.mimic.tables import load_tables
from rawtables import dicom, make_frames, write_raw


def build(tmp_path, frames=None, **opts):
    raw = write_raw(tmp_path / "raw", frames or make_frames())
    cfg = ManifestConfig(raw=raw, out=tmp_path / "out" / "manifest.parquet", **opts)
    return make_manifest(cfg)


def test_selection_joins_and_exclusions(tmp_path):
    result, info = build(tmp_path)
    df = result.manifest
    assert df.columns[:7] == [
        "dicom_id",
        "study_id",
        "subject_id",
        "split",
        "view_position",
        "image_path",
        "report_path",
    ]
    assert df.columns[7:21] == list(schema.LABELS)
    # PA only; the LATERAL image of study 50000011 is dropped, its PA image kept.
    assert set(df["view_position"]) == {"PA"}
    assert dicom("01") in df["dicom_id"].to_list() and dicom("02") not in df["dicom_id"].to_list()
    # Study without a chexpert row excluded and counted; all-blank row kept.
    assert 50000031 not in df["study_id"].to_list()
    assert info["exclusions"]["no_label_row"] == {"images": 1, "studies": 1}
    assert 50000032 in df["study_id"].to_list()
    assert info["exclusions"]["view_missing"] == {"images": 2, "studies": 1}
    assert info["exclusions"]["view_not_selected"]["images"] == 3
    # Labels exactly as in the CSV, per study: both validate images share the study's row.
    val = df.filter(pl.col("split") == "validate")
    assert val.height == 2 and val["Pleural Effusion"].to_list() == [1.0, 1.0]
    row = df.filter(pl.col("study_id") == 50000011).row(0, named=True)
    assert row["Cardiomegaly"] == 1.0 and row["Edema"] == -1.0 and row["Atelectasis"] is None
    assert df.schema["Edema"] == pl.Float32 and df.schema["study_id"] == pl.Int64
    # Support Devices can coexist with No Finding.
    row = df.filter(pl.col("study_id") == 50000012).row(0, named=True)
    assert row["No Finding"] == 1.0 and row["Support Devices"] == 1.0
    # Sorted by (split, study_id, dicom_id) and paths of the real shape.
    assert df.sort("split", "study_id", "dicom_id").equals(df)
    assert row["image_path"] == f"files/p10/p10000001/s50000012/{dicom('03')}.jpg"
    assert info["counts"]["validate"] == {"images": 2, "studies": 1, "patients": 1}


def test_infer_missing_views(tmp_path):
    result, info = build(tmp_path, infer_missing_views=True)
    ids = result.manifest["dicom_id"].to_list()
    assert dicom("05") in ids  # blank ViewPosition, "postero-anterior" meaning
    assert dicom("06") not in ids  # blank both
    assert info["views_inferred"] == 1
    assert info["exclusions"]["view_missing"] == {"images": 1, "studies": 1}


def test_views_option(tmp_path):
    result, _ = build(tmp_path, views=("PA", "AP"))
    assert set(result.manifest["view_position"]) == {"PA", "AP"}


def test_select_studies_keeps_heldout_and_is_seeded():
    rows = [{"study_id": 50000000 + i, "split": "train"} for i in range(100)]
    rows += [
        {"study_id": 59000000 + i, "split": s}
        for i, s in enumerate(["validate"] * 5 + ["test"] * 5)
    ]
    df = pl.DataFrame(rows, schema={"study_id": pl.Int64, "split": pl.String})
    a, notes = select_studies(df, 30, 0, Exclusions())
    b, _ = select_studies(df.reverse(), 30, 0, Exclusions())
    c, _ = select_studies(df, 30, 1, Exclusions())
    assert a.height == 30 and not notes
    assert a.filter(pl.col("split") != "train").height == 10
    assert sorted(a["study_id"]) == sorted(b["study_id"])  # row order does not matter
    assert sorted(a["study_id"]) != sorted(c["study_id"])  # the seed does
    everything, notes = select_studies(df, 1000, 0, Exclusions())
    assert everything.height == 110 and "took all 100 train studies" in notes[0]
    held, notes = select_studies(df, 5, 0, Exclusions())
    assert held.height == 10 and "always kept" in notes[0]


def test_byte_identical(tmp_path):
    build(tmp_path / "a")
    build(tmp_path / "b")
    for name in ("manifest.parquet", "manifest.json"):
        a = (tmp_path / "a" / "out" / name).read_bytes()
        b = (tmp_path / "b" / "out" / name).read_bytes()
        if name == "manifest.json":  # raw_dir differs by design
            a, b = (json.loads(x) for x in (a, b))
            a.pop("raw_dir"), b.pop("raw_dir")
        assert a == b


def test_plain_csv_accepted(tmp_path):
    raw = write_raw(tmp_path / "raw", make_frames(), gz=False)
    result, _ = make_manifest(ManifestConfig(raw=raw, out=tmp_path / "m.parquet"))
    assert result.manifest.height > 0


def test_label_counts_in_json(tmp_path):
    _, info = build(tmp_path)
    counts = info["labels"]["train"]["Cardiomegaly"]
    assert counts == {"1": 1, "0": 0, "-1": 0, "blank": 2}
    assert info["labels"]["test"]["No Finding"]["0"] == 0  # No Finding is only 1 or blank


# ----- bad input: one clear error, no manifest left behind ------------------------------------


def _expect_error(tmp_path, frames, match, capsys=None):
    raw = write_raw(tmp_path / "raw", frames)
    out = tmp_path / "out" / "manifest.parquet"
    with pytest.raises(InputError, match=match):
        make_manifest(ManifestConfig(raw=raw, out=out))
    assert not out.exists()
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_missing_column(tmp_path):
    f = make_frames()
    f["metadata"] = f["metadata"].drop("ViewPosition")
    _expect_error(tmp_path, f, r"metadata\.csv\.gz: missing column 'ViewPosition'")


def test_label_value_two(tmp_path):
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(
        pl.when(pl.col("study_id") == "50000021")
        .then(pl.lit("2.0"))
        .otherwise(pl.col("Edema"))
        .alias("Edema")
    )
    _expect_error(tmp_path, f, r"chexpert\.csv\.gz: line 4: column 'Edema': label value '2\.0'")


def test_no_finding_zero_rejected(tmp_path):
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(pl.lit("0.0").alias("No Finding"))
    _expect_error(tmp_path, f, r"No Finding is only ever 1 or blank")


def test_duplicate_chexpert_rows(tmp_path):
    f = make_frames()
    f["chexpert"] = pl.concat([f["chexpert"], f["chexpert"].head(1)])
    _expect_error(tmp_path, f, r"duplicate key \(subject_id, study_id\) \(study_id 50000011\)")


def test_malformed_ids_never_echo_subject(tmp_path):
    f = make_frames()
    f["split"] = f["split"].with_columns(
        pl.when(pl.col("dicom_id") == dicom("03"))
        .then(pl.lit("9999"))
        .otherwise(pl.col("subject_id"))
        .alias("subject_id")
    )
    raw = write_raw(tmp_path / "raw", f)
    with pytest.raises(InputError) as err:
        load_tables(raw)
    assert "malformed subject_id" in str(err.value) and "9999" not in str(err.value)


def test_unknown_split_value(tmp_path):
    f = make_frames()
    f["split"] = f["split"].with_columns(pl.lit("dev").alias("split"))
    _expect_error(tmp_path, f, r"unknown split value 'dev'")


def test_patient_in_two_splits(tmp_path):
    f = make_frames()
    f["split"] = f["split"].with_columns(
        pl.when(pl.col("study_id") == "50000012")
        .then(pl.lit("test"))
        .otherwise(pl.col("split"))
        .alias("split")
    )
    _expect_error(
        tmp_path, f, r"patient\(s\) appear in more than one split \(studies 50000011, 50000012\)"
    )


def test_split_row_not_in_metadata_is_counted(tmp_path):
    f = make_frames()
    f["metadata"] = f["metadata"].filter(pl.col("dicom_id") != dicom("09"))
    result, info = build(tmp_path, frames=f)
    assert dicom("09") not in result.manifest["dicom_id"].to_list()
    assert info["exclusions"]["split_row_not_in_metadata"] == {"images": 1, "studies": 1}


def test_corrupt_gzip(tmp_path):
    raw = write_raw(tmp_path / "raw", make_frames())
    path = raw / f"{schema.SPLIT_CSV}.gz"
    data = gzip.compress(make_frames()["split"].write_csv().encode() * 50)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"split\.csv\.gz: cannot decompress or parse"):
        load_tables(raw)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"split\.csv\.gz"):
        load_tables(raw)


def test_empty_csv(tmp_path):
    raw = write_raw(tmp_path / "raw", make_frames(), gz=False)
    (raw / schema.CHEXPERT_CSV).write_bytes(b"")
    with pytest.raises(InputError, match=r"chexpert\.csv: the file is empty"):
        load_tables(raw)
    (raw / schema.CHEXPERT_CSV).write_text(",".join(schema.CHEXPERT_COLUMNS) + "\n")
    with pytest.raises(InputError, match=r"no data rows"):
        load_tables(raw)


def test_missing_raw_and_missing_file(tmp_path):
    # each names the commands that make what is missing
    with pytest.raises(InputError, match=r"nope: raw data directory not found; .*`cxr demo`"):
        load_tables(tmp_path / "nope")
    raw = write_raw(tmp_path / "raw", make_frames())
    (raw / f"{schema.METADATA_CSV}.gz").unlink()
    with pytest.raises(InputError, match=r"metadata\.csv: .* not found; `cxr download metadata`"):
        load_tables(raw)


def test_cli_errors_are_one_line(tmp_path, capsys):
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(pl.lit("2").alias("Fracture"))
    raw = write_raw(tmp_path / "raw", f)
    rc = main(["--data-dir", str(tmp_path / "d"), "manifest", "--raw", str(raw)])
    err = capsys.readouterr().err
    assert rc == 1
    assert (
        err.count("\n") == 1 and err.startswith("cxr manifest: error: ") and "Traceback" not in err
    )
    assert not (tmp_path / "d" / "processed").exists()


def test_cli_summary_and_no_torch(tmp_path):
    raw = write_raw(tmp_path / "raw", make_frames())
    code = (
        "import sys; from cxr.cli import main; rc = main(['--data-dir', sys.argv[1], 'manifest', "
        "'--raw', sys.argv[2]]); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "d"), str(raw)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "validate" in out.stdout and "Pleural Effusion" in out.stdout
    for subject in {"10000001", "10000002", "10000003", "10000004", "10000005"}:
        assert subject not in out.stdout + out.stderr
    assert (tmp_path / "d" / "processed" / "manifest.parquet").is_file()


def test_build_manifest_pure(tmp_path):
    raw = write_raw(tmp_path / "raw", make_frames())
    tables = load_tables(raw)
    result = build_manifest(tables, ManifestConfig(raw=raw, out=tmp_path / "x.parquet"))
    assert not (tmp_path / "x.parquet").exists()  # building writes nothing
    assert result.manifest.height == 6


def test_unreadable_directory(tmp_path, monkeypatch, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    # Tests run as root, where chmod does not deny reads: simulate the permission check instead.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(raw) else real_access(p, mode)
    )
    rc = main(["--data-dir", str(tmp_path / "d"), "manifest", "--raw", str(raw)])
    err = capsys.readouterr().err
    assert rc == 1 and "directory is not readable" in err and err.count("\n") == 1
    rc = main(["verify", "--raw", str(raw)])
    assert rc == 1 and "directory is not readable" in capsys.readouterr().err


def test_every_excluded_image_has_exactly_one_reason(tmp_path):
    """Images kept + images excluded (summed over reasons) = every image either file lists."""
    f = make_frames()
    f["metadata"] = f["metadata"].filter(pl.col("dicom_id") != dicom("09"))  # only in split
    f["split"] = f["split"].filter(pl.col("dicom_id") != dicom("04"))  # only in metadata
    all_images = set(f["split"]["dicom_id"]) | set(f["metadata"]["dicom_id"])
    result, info = build(tmp_path, frames=f, n_studies=3)  # 2 held-out + 1 sampled train study
    excl = info["exclusions"]
    assert set(excl) == {
        "split_row_not_in_metadata",
        "metadata_image_not_in_split",
        "view_missing",
        "view_not_selected",
        "no_label_row",
        "train_study_not_sampled",
    }
    assert excl["metadata_image_not_in_split"] == {"images": 1, "studies": 1}
    assert result.manifest.height + sum(c["images"] for c in excl.values()) == len(all_images)
    assert info["counts"]["total"]["studies"] == 3


def test_label_row_of_another_patient_is_an_error(tmp_path):
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(
        pl.when(pl.col("study_id") == "50000051")
        .then(pl.lit("10000004"))
        .otherwise(pl.col("subject_id"))
        .alias("subject_id")
    )
    _expect_error(
        tmp_path,
        f,
        r"chexpert\.csv\.gz: line 8: column 'subject_id': study 50000051 has its label row "
        r"under another patient",
    )


def test_label_row_of_another_patient_is_an_error_whatever_the_view(tmp_path):
    """The check covers every study of the split file, not only those of selected views: study
    50000052 has a left-lateral image only, which the PA selection drops."""
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(
        pl.when(pl.col("study_id") == "50000052")
        .then(pl.lit("10000004"))
        .otherwise(pl.col("subject_id"))
        .alias("subject_id")
    )
    _expect_error(tmp_path, f, r"study 50000052 has its label row under another patient")


def test_image_under_another_study_in_metadata_is_an_error(tmp_path):
    f = make_frames()
    f["metadata"] = f["metadata"].with_columns(
        pl.when(pl.col("dicom_id") == dicom("03"))
        .then(pl.lit("50000011"))
        .otherwise(pl.col("study_id"))
        .alias("study_id")
    )
    _expect_error(
        tmp_path,
        f,
        rf"split\.csv\.gz: line 4: column 'study_id': image {dicom('03')} has another study or "
        r"patient in mimic-cxr-2\.0\.0-metadata\.csv\.gz",
    )


def test_label_rows_without_images_are_counted(tmp_path):
    f = make_frames()
    extra = f["chexpert"].head(1).with_columns(pl.lit("50000099").alias("study_id"))
    f["chexpert"] = pl.concat([f["chexpert"], extra])
    result, info = build(tmp_path, frames=f)
    assert info["label_rows_without_images"] == 1
    assert 50000099 not in result.manifest["study_id"].to_list()
    _, clean = build(tmp_path / "clean")
    assert clean["label_rows_without_images"] == 0


def test_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "adir", tmp_path / "afile" / "manifest.parquet"):
        rc = main(["manifest", "--raw", str(raw), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "cannot write" in err, err

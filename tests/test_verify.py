"""`cxr verify` on hand-made trees: presence, schema problems, manifest files."""

from __future__ import annotations

import polars as pl

from cxr import schema
from cxr.cli import main
from cxr.manifest import ManifestConfig, make_manifest
from rawtables import dicom, make_frames, write_raw


def run(capsys, *args):
    rc = main(["verify", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_all_present(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    rc, out, err = run(capsys, "--raw", raw)
    assert rc == 0, err
    assert "studies with labels: 8" in out
    assert sum(line.strip().startswith("present") for line in out.splitlines()) == 4


def test_missing_file_and_files_dir(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    (raw / f"{schema.SPLIT_CSV}.gz").unlink()
    (raw / "files").rmdir()
    rc, out, err = run(capsys, "--raw", raw)
    assert rc == 1
    assert "MISSING" in out and f"{schema.SPLIT_CSV}[.gz]" in out
    assert "files/" in err


def test_schema_problems_listed(tmp_path, capsys):
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(pl.lit("2.0").alias("Edema"))
    f["metadata"] = f["metadata"].filter(pl.col("dicom_id") != dicom("09"))
    f["split"] = pl.concat([f["split"], f["split"].head(1)])
    raw = write_raw(tmp_path / "raw", f)
    rc, _, err = run(capsys, "--raw", raw)
    assert rc == 1
    assert "column 'Edema': label value '2.0'" in err
    assert "duplicate key (dicom_id)" in err
    assert f"image {dicom('09')} is not listed in the metadata" in err


def test_manifest_files(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    out_path = tmp_path / "m.parquet"
    result, _ = make_manifest(ManifestConfig(raw=raw, out=out_path))
    rc, out, err = run(capsys, "--raw", raw, "--manifest", out_path)
    assert rc == 1 and "selected image is missing" in err and "report of study" in err
    # Create every selected image and report: now it passes.
    for subject, study, rel in result.manifest.select(
        "subject_id", "study_id", "image_path"
    ).iter_rows():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(b"x")
        (raw / schema.report_relpaths(subject, study)[0]).write_text(" FINAL REPORT\n")
    rc, out, err = run(capsys, "--raw", raw, "--manifest", out_path)
    assert rc == 0, err
    for subject in result.manifest["subject_id"].unique().to_list():
        assert str(subject) not in out + err

"""`cxr verify` on hand-made trees: presence, schema problems, manifest files."""

from __future__ import annotations

import polars as pl

from cxr.cli import main
from cxr.mimic import schema
from cxr.mimic.manifest import ManifestConfig, make_manifest
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


def test_messages_name_file_column_and_line(tmp_path, capsys):
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(
        pl.when(pl.col("study_id") == "50000021")
        .then(pl.lit("2"))
        .otherwise(pl.col("Edema"))
        .alias("Edema")
    )
    f["chexpert"] = pl.concat([f["chexpert"], f["chexpert"].head(1)])
    raw = write_raw(tmp_path / "raw", f)
    rc, _, err = run(capsys, "--raw", raw)
    assert rc == 1
    assert f"{schema.CHEXPERT_CSV}.gz: line 4: column 'Edema': label value '2'" in err
    # One duplicated row is one problem (not also reported as a duplicated study_id).
    assert err.count("duplicate key") == 1
    assert "line 2: duplicate key (subject_id, study_id) (study_id 50000011) (and 1 more)" in err


def test_deep_decodes_every_selected_image(tmp_path, capsys):
    import io

    from PIL import Image

    raw = write_raw(tmp_path / "raw", make_frames())
    out_path = tmp_path / "m.parquet"
    result, _ = make_manifest(ManifestConfig(raw=raw, out=out_path))
    buf = io.BytesIO()
    Image.new("L", (64, 48), 128).save(buf, format="JPEG", quality=95)
    for subject, study, rel in result.manifest.select(
        "subject_id", "study_id", "image_path"
    ).iter_rows():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(buf.getvalue())
        (raw / schema.report_relpaths(subject, study)[1]).write_text(" FINAL REPORT\n")
    rc, out, err = run(capsys, "--raw", raw, "--manifest", out_path, "--deep")
    assert rc == 0, err
    assert f"decoded: {result.manifest.height} images" in out
    # Two truncated JPEGs: the first is named by dicom_id (never by path), the other counted.
    broken = result.manifest["dicom_id", "image_path"].rows()[:2]  # manifest order
    for _, rel in broken:
        (raw / rel).write_bytes(buf.getvalue()[:200])
    rc, out, err = run(capsys, "--raw", raw, "--manifest", out_path, "--deep")
    assert rc == 1
    assert f"decoded: {result.manifest.height - 2} images" in out
    assert f"image {broken[0][0]}: does not decode" in err and "(and 1 more)" in err
    for subject in result.manifest["subject_id"].unique().to_list():
        assert str(subject) not in out + err


def test_deep_without_manifest_is_one_line(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", make_frames())
    rc, _, err = run(capsys, "--raw", raw, "--deep")
    assert rc == 1 and "--deep needs --manifest" in err and err.count("\n") == 1


def test_label_row_under_another_patient_is_a_problem(tmp_path, capsys):
    """verify runs the manifest's cross-file checks: a label row filed under another patient."""
    f = make_frames()
    f["chexpert"] = f["chexpert"].with_columns(
        pl.when(pl.col("study_id") == "50000051")
        .then(pl.lit("10000004"))
        .otherwise(pl.col("subject_id"))
        .alias("subject_id")
    )
    raw = write_raw(tmp_path / "raw", f)
    rc, _, err = run(capsys, "--raw", raw)
    assert rc == 1
    line = next(x for x in err.splitlines() if "under another patient" in x)
    # chexpert.csv.gz line 8 holds study 50000051 (header is line 1, its row is the 8th)
    assert f"{schema.CHEXPERT_CSV}.gz: line 8: column 'subject_id': study 50000051" in line
    for subject in ("10000004", "10000005"):
        assert subject not in err


def test_study_that_differs_between_split_and_metadata_is_a_problem(tmp_path, capsys):
    f = make_frames()
    f["metadata"] = f["metadata"].with_columns(
        pl.when(pl.col("dicom_id") == dicom("07"))
        .then(pl.lit("50000032"))
        .otherwise(pl.col("study_id"))
        .alias("study_id")
    )
    raw = write_raw(tmp_path / "raw", f)
    rc, _, err = run(capsys, "--raw", raw)
    assert rc == 1
    assert (
        f"{schema.SPLIT_CSV}.gz: line 8: column 'study_id': image {dicom('07')} has another "
        f"study or patient in {schema.METADATA_CSV}.gz" in err
    )
    assert "10000003" not in err

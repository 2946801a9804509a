"""The radiologist-labelled test set: finding it, reading it by column name, refusing bad input in
one line, and aligning it with manifest rows."""

from __future__ import annotations

import gzip
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr.core.errors import InputError
from cxr.mimic import schema
from cxr.mimic.radiologist import (
    RadiologistLabels,
    find_radiologist_csv,
    radiologist_targets,
    read_radiologist_labels,
)

NAN = math.nan


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ------------------------------------------------------------------------------------ finding


def test_find_radiologist_csv_plain_then_gz(tmp_path):
    assert find_radiologist_csv(tmp_path) is None
    assert find_radiologist_csv(tmp_path / "absent") is None
    gz = write(tmp_path / f"{schema.RADIOLOGIST_CSV}.gz", "study_id\n50000001\n")
    assert find_radiologist_csv(tmp_path) == gz
    plain = write(tmp_path / schema.RADIOLOGIST_CSV, "study_id\n50000001\n")
    assert find_radiologist_csv(str(tmp_path)) == plain  # the file as PhysioNet ships it first
    assert schema.RADIOLOGIST_CSV == "mimic-cxr-2.1.0-test-set-labeled.csv"


# ------------------------------------------------------------------------------------ reading


def test_reads_airspace_opacity_as_lung_opacity_in_any_column_order(tmp_path):
    path = write(
        tmp_path / schema.RADIOLOGIST_CSV,
        "Pneumothorax,Airspace Opacity,reader,study_id,No Finding,Atelectasis\n"
        "0,1.0,A,50000002,,-1.0\n"
        '1,"",B,50000001,1,0.0\n'
        "-1,0,C,59999999,1.0,1\n",
    )
    got = read_radiologist_labels(path)
    assert isinstance(got, RadiologistLabels)
    assert got.path == path
    # CheXpert names in schema.LABELS order, unknown columns dropped, sorted by study_id
    assert got.table.columns == [
        "study_id",
        "Atelectasis",
        "Lung Opacity",
        "No Finding",
        "Pneumothorax",
    ]
    assert got.labels == ("Atelectasis", "Lung Opacity", "No Finding", "Pneumothorax")
    assert got.table.schema["study_id"] == pl.Int64
    assert all(got.table.schema[c] == pl.Float32 for c in got.labels)
    assert got.table["study_id"].to_list() == [50000001, 50000002, 59999999]
    assert got.study_ids == frozenset({50000001, 50000002, 59999999})
    expected = {
        "Atelectasis": [0.0, -1.0, 1.0],
        "Lung Opacity": [NAN, 1.0, 0.0],  # a quoted empty field is blank too
        "No Finding": [1.0, NAN, 1.0],
        "Pneumothorax": [1.0, 0.0, -1.0],
    }
    for name, values in expected.items():
        column = got.table[name]
        assert column.null_count() == 0  # blank is NaN, never null
        assert all(same(a, b) for a, b in zip(column.to_list(), values, strict=True)), name
    assert set(got.missing_labels) == set(schema.LABELS) - set(expected)
    assert list(got.missing_labels) == [n for n in schema.LABELS if n not in expected]


def test_reads_lung_opacity_name_and_gzip(tmp_path):
    header = ",".join(("study_id", *schema.LABELS))
    row = ",".join(("50414267", *["1.0", "0.0", "-1.0", ""] * 3, "1.0", "0.0"))
    path = write(tmp_path / f"{schema.RADIOLOGIST_CSV}.gz", f"{header}\n{row}\n")
    got = read_radiologist_labels(path)
    assert got.missing_labels == ()
    assert got.labels == schema.LABELS
    study, *values = got.table.row(0)
    assert study == 50414267
    want = [1.0, 0.0, -1.0, NAN] * 3 + [1.0, 0.0]
    assert all(same(a, b) for a, b in zip(values, want, strict=True)), values


def test_a_file_without_labels_is_read_with_every_label_missing(tmp_path):
    got = read_radiologist_labels(write(tmp_path / "r.csv", "study_id,notes\n50000001,x\n"))
    assert got.table.columns == ["study_id"] and got.missing_labels == schema.LABELS


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("Atelectasis,Edema\n1.0,0.0\n", 1, "study_id", "missing column"),
        (
            "study_id,Lung Opacity,Airspace Opacity\n50000001,1.0,1.0\n",
            1,
            "Airspace Opacity",
            "same label",
        ),
        ("study_id,Edema,Edema\n50000001,1.0,0.0\n", 1, "Edema", "more than once"),
        ("study_id,Edema\n50000001,1.0\n40000002,0.0\n", 3, "study_id", "'40000002'"),
        ("study_id,Edema\n50000001,1.0\n5000002,0.0\n", 3, "study_id", "8 digits starting with 5"),
        ("study_id,Edema\n50000001,1.0\n,0.0\n", 3, "study_id", "malformed study_id"),
        ("study_id,Edema\ns50000001,1.0\n", 2, "study_id", "malformed study_id"),
        ("study_id,Edema\n50000001,1.0\n50000002,2\n", 3, "Edema", "'2' is not 1, 0, -1 or blank"),
        ("study_id,Airspace Opacity\n50000001,yes\n", 2, "Airspace Opacity", "'yes'"),
        ("study_id,Edema\n50000001, 1.0\n", 2, "Edema", "' 1.0'"),
        ("study_id,Edema\n50000001,0.5\n", 2, "Edema", "'0.5'"),
        (
            "study_id,Edema\n50000001,1.0\n50000002,0.0\n50000001,0.0\n",
            4,
            "study_id",
            "study 50000001 is listed again (first on line 2)",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_line_and_column(tmp_path, text, line, column, words):
    path = write(tmp_path / schema.RADIOLOGIST_CSV, text)
    with pytest.raises(InputError) as info:
        read_radiologist_labels(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: line {line}: column '{column}': "), message
    assert words in message, message


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "empty"), ("study_id,Edema\n", "no data rows"), ("study_id,Edema\n50000001,1,0\n", "")],
)
def test_unreadable_file_is_one_line_naming_it(tmp_path, text, words):
    path = write(tmp_path / schema.RADIOLOGIST_CSV, text)
    with pytest.raises(InputError) as info:
        read_radiologist_labels(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert words in str(info.value)


def test_corrupt_gzip_is_one_line(tmp_path):
    path = tmp_path / f"{schema.RADIOLOGIST_CSV}.gz"
    path.write_bytes(gzip.compress(b"study_id,Edema\n50000001,1.0\n" * 50)[:40])
    with pytest.raises(InputError) as info:
        read_radiologist_labels(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ targets


def _table(tmp_path) -> pl.DataFrame:
    path = write(
        tmp_path / schema.RADIOLOGIST_CSV,
        "study_id,Edema,Airspace Opacity,Cardiomegaly\n50000003,1.0,,-1.0\n50000001,0.0,1.0,1.0\n",
    )
    return read_radiologist_labels(path).table


def test_targets_align_by_study_id_and_leave_nan_where_not_covered(tmp_path):
    table = _table(tmp_path)
    # image-level rows: repeated studies, any order, one study not in the file; no subject_id
    rows = pl.DataFrame(
        {
            "dicom_id": ["d1", "d2", "d3", "d4", "d5"],
            "study_id": [50000001, 50000002, 50000003, 50000001, 50000003],
        }
    )
    labels = ["Cardiomegaly", "Edema", "Lung Opacity", "Pneumonia"]
    y = radiologist_targets(rows, table, labels)
    assert y.shape == (5, 4) and y.dtype == np.float64
    expected = np.array(
        [
            [1.0, 0.0, 1.0, NAN],
            [NAN, NAN, NAN, NAN],  # not in the file
            [-1.0, 1.0, NAN, NAN],  # blank stays NaN; Pneumonia is absent from the file
            [1.0, 0.0, 1.0, NAN],
            [-1.0, 1.0, NAN, NAN],
        ]
    )
    np.testing.assert_array_equal(y, expected)  # NaN positions must match too
    # the radiologist's name of Lung Opacity is understood, and an empty selection is fine
    np.testing.assert_array_equal(
        radiologist_targets(rows, table, ["Airspace Opacity"]), expected[:, 2:3]
    )
    assert radiologist_targets(rows.head(0), table, labels).shape == (0, 4)


def test_targets_read_only_study_id(tmp_path):
    table = _table(tmp_path)
    rows = pl.DataFrame(
        {
            "study_id": pl.Series([50000003, 50000001], dtype=pl.Int32),
            # a subject_id column that could not even be compared: it must not be touched
            "subject_id": pl.Series([[1], None], dtype=pl.List(pl.Int64)),
        }
    )
    y = radiologist_targets(rows, table, ["Edema"])
    np.testing.assert_array_equal(y, [[1.0], [0.0]])
    with pytest.raises(ValueError, match="study_id"):
        radiologist_targets(pl.DataFrame({"dicom_id": ["x"]}), table, ["Edema"])


def test_targets_at_scale_match_a_dictionary_lookup():
    rng = np.random.default_rng(0)
    studies = np.arange(50_000_000, 50_020_000)
    values = rng.choice([1.0, 0.0, -1.0, NAN], size=(len(studies), 2)).astype(np.float32)
    table = pl.DataFrame(
        {
            "study_id": pl.Series(studies, dtype=pl.Int64),
            "Edema": values[:, 0],
            "Fracture": values[:, 1],
        }
    )
    asked = rng.integers(49_990_000, 50_030_000, size=200_000)
    y = radiologist_targets(pl.DataFrame({"study_id": asked}), table, ["Fracture", "Edema"])
    lookup = {int(s): (float(v[1]), float(v[0])) for s, v in zip(studies, values, strict=True)}
    for i in rng.integers(0, len(asked), size=2_000):
        want = lookup.get(int(asked[i]), (NAN, NAN))
        assert same(y[i, 0], want[0]) and same(y[i, 1], want[1]), i
    assert np.isnan(y[(asked < studies[0]) | (asked > studies[-1])]).all()


def test_reading_does_not_import_torch(tmp_path):
    path = write(tmp_path / schema.RADIOLOGIST_CSV, "study_id,Edema\n50000001,1.0\n")
    code = (
        "import sys; from cxr.mimic.radiologist import read_radiologist_labels as r; "
        f"r({str(path)!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

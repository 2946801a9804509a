"""Demographics from MIMIC-IV: the age rule, the race rule, insurance, the readers, the manifest's
columns, and the NegBio labels the manifest carries beside the CheXpert ones."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
from pathlib import Path

import polars as pl
import pytest

from cxr.cli import main
from cxr.core.errors import InputError
from cxr.mimic import schema
from cxr.mimic.demographics import (
    AGE_GROUPS,
    RACE_GROUPS,
    UNKNOWN,
    find_demographics,
    nearest_insurance,
    patient_race,
    race_group_of,
    read_admissions,
    read_patients,
    study_demographics,
    study_times,
)
from cxr.mimic.manifest import ManifestConfig, make_manifest

T = dt.datetime


def _admissions(rows: list[tuple]) -> pl.DataFrame:
    """rows: (subject_id, hadm_id, admittime, dischtime, insurance, race)."""
    return pl.DataFrame(
        rows,
        schema={
            "subject_id": pl.Int64,
            "hadm_id": pl.Int64,
            "admittime": pl.Datetime,
            "dischtime": pl.Datetime,
            "insurance": pl.String,
            "race": pl.String,
        },
        orient="row",
    )


def _patients(rows: list[tuple]) -> pl.DataFrame:
    """rows: (subject_id, gender, anchor_age, anchor_year)."""
    return pl.DataFrame(
        rows,
        schema={
            "subject_id": pl.Int64,
            "gender": pl.String,
            "anchor_age": pl.Int64,
            "anchor_year": pl.Int64,
        },
        orient="row",
    )


def _studies(rows: list[tuple]) -> pl.DataFrame:
    """rows: (study_id, subject_id, study_time)."""
    return pl.DataFrame(
        rows,
        schema={"study_id": pl.Int64, "subject_id": pl.Int64, "study_time": pl.Datetime},
        orient="row",
    )


# --------------------------------------------------------------------------- age


def test_age_counts_whole_years_across_a_year_boundary():
    """anchor_age + (study year - anchor_year): the last day of the anchor year and the first of
    the next are a year apart, whatever the birthday (MIMIC-IV gives none)."""
    patients = _patients([(10000001, "F", 59, 2150), (10000002, "M", 79, 2150)])
    studies = _studies(
        [
            (50000001, 10000001, T(2150, 12, 31, 23, 59)),
            (50000002, 10000001, T(2151, 1, 1, 0, 1)),
            (50000003, 10000002, T(2149, 6, 1)),
            (50000004, 10000002, T(2151, 6, 1)),
        ]
    )
    table, _ = study_demographics(studies, patients, _admissions([]))
    ages = dict(table.select("study_id", "age_at_study").iter_rows())
    groups = dict(table.select("study_id", "age_group").iter_rows())
    assert ages == {50000001: 59, 50000002: 60, 50000003: 78, 50000004: 80}
    # the year boundary moves both patients into the next age group
    assert groups == {50000001: "40-60", 50000002: "60-80", 50000003: "60-80", 50000004: "80+"}


def test_age_groups_start_at_their_lower_bound():
    patients = _patients([(10000000 + a, "F", a, 2150) for a in (18, 19, 20, 39, 40, 80, 91)])
    studies = _studies(
        [(50000000 + a, 10000000 + a, T(2150, 3, 1)) for a in (18, 19, 20, 39, 40, 80, 91)]
    )
    table, _ = study_demographics(studies, patients, _admissions([]))
    got = dict(table.select("age_at_study", "age_group").iter_rows())
    assert got == {
        18: "0-20",
        19: "0-20",
        20: "20-40",
        39: "20-40",
        40: "40-60",
        80: "80+",
        91: "80+",
    }
    assert [name for name, _, _ in AGE_GROUPS] == ["0-20", "20-40", "40-60", "60-80", "80+"]


def test_implausible_age_and_undated_study_are_unknown_and_counted():
    patients = _patients([(10000001, "F", 20, 2190)])
    studies = _studies([(50000001, 10000001, T(2150, 1, 1)), (50000002, 10000001, None)])
    table, summary = study_demographics(studies, patients, _admissions([]))
    assert table["age_at_study"].null_count() == 2
    assert set(table["age_group"]) == {UNKNOWN}
    assert (summary.implausible_ages, summary.undated_studies) == (1, 1)


# --------------------------------------------------------------------------- race


def test_race_values_map_to_their_groups():
    assert race_group_of("WHITE - RUSSIAN") == "White"
    assert race_group_of("PORTUGUESE") == "White"
    assert race_group_of("BLACK/CAPE VERDEAN") == "Black"
    assert race_group_of("HISPANIC/LATINO - DOMINICAN") == "Hispanic/Latino"
    assert race_group_of("SOUTH AMERICAN") == "Hispanic/Latino"
    assert race_group_of("ASIAN - KOREAN") == "Asian"
    assert race_group_of("AMERICAN INDIAN/ALASKA NATIVE") == "American Indian/Alaska Native"
    assert race_group_of("MULTIPLE RACE/ETHNICITY") == "Other"
    for unknown in ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "", None):
        assert race_group_of(unknown) == UNKNOWN
    assert race_group_of("A VALUE OF A NEWER VERSION") == UNKNOWN
    assert list(RACE_GROUPS) == [
        "White",
        "Black",
        "Hispanic/Latino",
        "Asian",
        "American Indian/Alaska Native",
        "Other",
        UNKNOWN,
    ]


def test_race_is_the_most_frequent_known_group_ties_to_the_most_recent():
    a = 10000001  # White twice, Black once, Unknown three times: White (Unknown never wins)
    b = 10000002  # White once, Asian once: the tie goes to the more recent (Asian)
    c = 10000003  # tie again, but the White admission is the most recent
    d = 10000004  # only unknown values
    e = 10000005  # a tie where the most recent admission is Unknown: among the tied, Black
    rows = [
        (a, 1, T(2150, 1, 1), T(2150, 1, 2), "Medicare", "WHITE"),
        (a, 2, T(2151, 1, 1), T(2151, 1, 2), "Medicare", "WHITE - OTHER EUROPEAN"),
        (a, 3, T(2152, 1, 1), T(2152, 1, 2), "Medicare", "BLACK/AFRICAN AMERICAN"),
        (a, 4, T(2153, 1, 1), T(2153, 1, 2), "Medicare", "UNKNOWN"),
        (a, 5, T(2153, 2, 1), T(2153, 2, 2), "Medicare", "UNABLE TO OBTAIN"),
        (a, 6, T(2153, 3, 1), T(2153, 3, 2), "Medicare", "PATIENT DECLINED TO ANSWER"),
        (b, 7, T(2150, 1, 1), T(2150, 1, 2), "Medicaid", "WHITE"),
        (b, 8, T(2151, 1, 1), T(2151, 1, 2), "Medicaid", "ASIAN - CHINESE"),
        (c, 9, T(2151, 1, 1), T(2151, 1, 2), "Other", "WHITE"),
        (c, 10, T(2150, 1, 1), T(2150, 1, 2), "Other", "ASIAN"),
        (d, 11, T(2150, 1, 1), T(2150, 1, 2), "Other", "UNKNOWN"),
        (d, 12, T(2151, 1, 1), T(2151, 1, 2), "Other", None),
        (e, 13, T(2150, 1, 1), T(2150, 1, 2), "Other", "WHITE"),
        (e, 14, T(2151, 1, 1), T(2151, 1, 2), "Other", "BLACK/AFRICAN"),
        (e, 15, T(2152, 1, 1), T(2152, 1, 2), "Other", "UNKNOWN"),
    ]
    got = dict(patient_race(_admissions(rows)).iter_rows())
    assert got == {a: "White", b: "Asian", c: "White", d: UNKNOWN, e: "Black"}


def test_mimic_iv_1_0_ethnicity_column_is_read_as_race(tmp_path):
    path = tmp_path / "admissions.csv.gz"
    header = (
        "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,"
        "discharge_location,insurance,language,marital_status,ethnicity,edregtime,edouttime,"
        "hospital_expire_flag"
    )
    lines = [
        header,
        "10000001,20000001,2150-01-01 10:00:00,2150-01-03 10:00:00,,URGENT,EMERGENCY ROOM,HOME,"
        "Medicare,ENGLISH,MARRIED,HISPANIC/LATINO,,,0",
        "10000001,20000002,2151-01-01 10:00:00,,,URGENT,EMERGENCY ROOM,HOME,"
        "Medicare,ENGLISH,MARRIED,UNABLE TO OBTAIN,,,0",
    ]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    admissions = read_admissions(path)
    assert admissions["race"].to_list() == ["HISPANIC/LATINO", "UNABLE TO OBTAIN"]
    # a blank dischtime is the admission time
    assert admissions["dischtime"][1] == admissions["admittime"][1]
    assert dict(patient_race(admissions).iter_rows()) == {10000001: "Hispanic/Latino"}


def test_unlisted_race_values_are_unknown_and_counted():
    admissions = _admissions(
        [
            (10000001, 1, T(2150, 1, 1), T(2150, 1, 2), "Other", "MARTIAN"),
            (10000001, 2, T(2150, 2, 1), T(2150, 2, 2), "Other", "MARTIAN"),
            (10000002, 3, T(2150, 1, 1), T(2150, 1, 2), "Other", "WHITE"),
        ]
    )
    patients = _patients([(10000001, "F", 50, 2150), (10000002, "M", 50, 2150)])
    studies = _studies([(50000001, 10000001, T(2150, 1, 1)), (50000002, 10000002, T(2150, 1, 1))])
    table, summary = study_demographics(studies, patients, admissions)
    assert dict(table.select("study_id", "race_group").iter_rows()) == {
        50000001: UNKNOWN,
        50000002: "White",
    }
    assert summary.unlisted_race_values == {"MARTIAN": 2}
    assert summary.race_unknown == 1


# --------------------------------------------------------------------------- insurance, absence


def test_insurance_of_the_nearest_admission():
    s = 10000001
    admissions = _admissions(
        [
            (s, 1, T(2150, 1, 1), T(2150, 1, 10), "Medicare", "WHITE"),
            (s, 2, T(2150, 3, 1), T(2150, 3, 5), "Medicaid", "WHITE"),
            (s, 3, T(2150, 6, 1), T(2150, 6, 2), " ", "WHITE"),
            (s, 4, T(2150, 9, 1), T(2150, 9, 2), "Private", "WHITE"),
            (s, 5, T(2150, 9, 21), T(2150, 9, 22), "Other", "WHITE"),
        ]
    )
    studies = _studies(
        [
            (50000001, s, T(2150, 1, 5)),  # within the first stay
            (50000002, s, T(2150, 1, 20)),  # 10 days after the first, 40 before the second
            (50000003, s, T(2150, 2, 27)),  # 3 days before the second
            (50000004, s, T(2150, 6, 1, 12)),  # the nearest has a blank insurance
            (50000005, s, T(2150, 9, 11, 12)),  # equidistant: the more recent admission
            (50000006, s, None),  # no study time
            (50000007, 10000002, T(2150, 1, 1)),  # no admission at all
        ]
    )
    got = dict(nearest_insurance(studies, admissions).iter_rows())
    assert got == {
        50000001: "Medicare",
        50000002: "Medicare",
        50000003: "Medicaid",
        50000004: UNKNOWN,
        50000005: "Other",
        50000006: UNKNOWN,
        50000007: UNKNOWN,
    }


def test_patients_absent_from_mimic_iv_are_unknown_and_counted():
    patients = _patients([(10000001, "M", 70, 2150), (10000003, "F", 30, 2150)])
    admissions = _admissions(
        [(10000001, 1, T(2150, 1, 1), T(2150, 1, 2), "Medicare", "BLACK/AFRICAN")]
    )
    studies = _studies(
        [
            (50000001, 10000001, T(2150, 1, 1)),
            (50000002, 10000002, T(2150, 1, 1)),  # absent from patients and admissions
            (50000003, 10000003, T(2150, 1, 1)),  # in patients, no admission
        ]
    )
    table, summary = study_demographics(studies, patients, admissions, "3.1")
    rows = {r["study_id"]: r for r in table.iter_rows(named=True)}
    assert rows[50000001] == {
        "study_id": 50000001,
        "sex": "Male",
        "age_at_study": 70,
        "age_group": "60-80",
        "race_group": "Black",
        "insurance": "Medicare",
    }
    absent = rows[50000002]
    assert absent["age_at_study"] is None
    assert {absent[c] for c in ("sex", "age_group", "race_group", "insurance")} == {UNKNOWN}
    lonely = rows[50000003]
    assert (lonely["sex"], lonely["age_group"]) == ("Female", "20-40")
    assert (lonely["race_group"], lonely["insurance"]) == (UNKNOWN, UNKNOWN)
    assert summary.to_dict() == {
        "mimic_iv_version": "3.1",
        "patients": 3,
        "absent_from_mimic_iv": 1,
        "without_admissions": 1,
        "race_unknown": 2,
        "implausible_ages": 0,
        "undated_studies": 0,
        "unlisted_race_values": {},
    }


def test_study_times_zero_pad_the_float_study_time():
    meta = pl.DataFrame(
        {
            "study_id": [50000001, 50000001, 50000002, 50000003],
            "StudyDate": ["21800506", "21800506", "21810101", "not a date"],
            "StudyTime": ["80556.875", "90000.0", "5.5", "120000"],
        }
    )
    got = dict(study_times(meta).iter_rows())
    assert got == {
        50000001: T(2180, 5, 6, 8, 5, 56),
        50000002: T(2181, 1, 1, 0, 0, 5),
        50000003: None,
    }


# --------------------------------------------------------------------------- readers


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


PATIENTS_HEADER = "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("10000001,X,50,2150,2017 - 2019,\n", "line 2: column 'gender': gender is not F or M"),
        ("10000001,F,fifty,2150,2017 - 2019,\n", "line 2: column 'anchor_age'"),
        ("10000001,F,50,150,2017 - 2019,\n", "line 2: column 'anchor_year'"),
        ("1234,F,50,2150,2017 - 2019,\n", "line 2: column 'subject_id': malformed subject_id"),
        (
            "10000001,F,50,2150,2017 - 2019,\n10000001,F,50,2150,2017 - 2019,\n",
            "duplicate key (subject_id)",
        ),
    ],
)
def test_bad_patients_file_is_one_line_without_the_subject_id(tmp_path, body, expected):
    path = _write(tmp_path / "patients.csv.gz", PATIENTS_HEADER + body)
    with pytest.raises(InputError) as err:
        read_patients(path)
    message = str(err.value)
    assert expected in message and str(path) in message
    assert "\n" not in message and "10000001" not in message


def test_admissions_without_a_race_column_or_with_a_bad_time(tmp_path):
    path = _write(
        tmp_path / "a.csv.gz",
        "subject_id,admittime,dischtime,insurance\n10000001,2150-01-01 10:00:00,,Medicare\n",
    )
    with pytest.raises(InputError, match="missing column 'race' \\(or 'ethnicity'"):
        read_admissions(path)
    path = _write(
        tmp_path / "b.csv.gz",
        "subject_id,hadm_id,admittime,dischtime,insurance,race\n"
        "10000001,20000001,yesterday,,Medicare,WHITE\n",
    )
    with pytest.raises(InputError, match="line 2: column 'admittime'"):
        read_admissions(path)


def test_find_demographics_layouts(tmp_path):
    raw = tmp_path / "raw"
    assert find_demographics(raw) is None
    core = raw / "mimiciv" / "1.0" / "core"
    _write(core / "patients.csv.gz", PATIENTS_HEADER)
    _write(core / "admissions.csv.gz", "x\n")
    hosp = raw / "mimiciv" / "2.2" / "hosp"
    (hosp).mkdir(parents=True)
    (hosp / "patients.csv").write_text(PATIENTS_HEADER)
    (hosp / "admissions.csv").write_text("x\n")
    (raw / "mimiciv" / "3.1" / "hosp").mkdir(parents=True)  # incomplete: skipped
    found = find_demographics(raw)
    assert found.version == "2.2" and found.patients == hosp / "patients.csv"
    one = find_demographics(raw, "1.0")
    assert one.version == "1.0" and one.admissions == core / "admissions.csv.gz"
    assert find_demographics(raw, "3.1") is None


# --------------------------------------------------------------------------- the manifest


@pytest.fixture(scope="module")
def built(demo_tree, tmp_path_factory):
    raw, summary = demo_tree
    out = tmp_path_factory.mktemp("manifest") / "manifest.parquet"
    _result, info = make_manifest(ManifestConfig(raw=raw, out=out))
    return raw, summary, pl.read_parquet(out), info


def test_manifest_carries_demographics_per_study(built):
    _raw, summary, manifest, info = built
    for column in ("sex", "age_at_study", "age_group", "race_group", "insurance"):
        assert column in manifest.columns
    per_study = manifest.group_by("study_id").agg(
        pl.col("sex", "age_group", "race_group", "insurance").n_unique()
    )
    assert (per_study.drop("study_id").to_numpy() == 1).all()  # one value per study
    sexes = dict(manifest.select("subject_id", "sex").unique().iter_rows())
    for subject, sex in sexes.items():
        if subject in summary.absent_from_mimic_iv:
            assert sex == UNKNOWN
        else:
            assert sex == {"F": "Female", "M": "Male"}[summary.sexes[subject]]
    demo = info["demographics"]
    assert demo["mimic_iv_version"] == "3.1"
    in_manifest = set(manifest["subject_id"].to_list())
    assert demo["absent_from_mimic_iv"] == len(in_manifest & summary.absent_from_mimic_iv) > 0
    assert set(manifest["age_group"]) <= {name for name, _, _ in AGE_GROUPS} | {UNKNOWN}
    # every known race group comes from the mapping
    assert set(manifest["race_group"]) <= set(RACE_GROUPS)
    assert info["inputs"]["mimic_iv_patients"]["file"] == "patients.csv.gz"


def test_manifest_demographics_options(demo_copy, tmp_path, capsys):
    import shutil

    out = tmp_path / "p" / "manifest.parquet"
    common = ["manifest", "--raw", str(demo_copy), "--out", str(out)]
    assert main([*common, "--no-demographics", "--no-negbio"]) == 0
    manifest = pl.read_parquet(out)
    assert "sex" not in manifest.columns and schema.NEGBIO_LABELLED not in manifest.columns
    shutil.rmtree(demo_copy / "mimiciv")
    assert main(common) == 0  # absent: the columns are simply not there
    assert "sex" not in pl.read_parquet(out).columns
    capsys.readouterr()
    assert main([*common, "--demographics"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cxr download demographics" in err and "mimiciv" in err


def test_manifest_summary_counts_demographics_without_identifiers(demo_raw, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "manifest.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr", "manifest", "--raw", str(demo_raw), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "demographics: MIMIC-IV 3.1" in proc.stdout and "absent from MIMIC-IV" in proc.stdout
    assert "NegBio labels:" in proc.stdout
    subjects = pl.read_parquet(out)["subject_id"].cast(pl.String).to_list()
    assert not [s for s in subjects if s in proc.stdout + proc.stderr]


# --------------------------------------------------------------------------- NegBio


def test_manifest_carries_negbio_beside_unchanged_chexpert_columns(built):
    _raw, summary, manifest, info = built
    studies = manifest.unique("study_id").sort("study_id")
    differ = cells = 0

    def same(a, b) -> bool:  # blank is null or NaN
        blank_a, blank_b = a is None or math.isnan(a), b is None or math.isnan(b)
        return (blank_a and blank_b) or a == b

    for row in studies.iter_rows(named=True):
        want = summary.negbio_labels[row["study_id"]]
        assert row[schema.NEGBIO_LABELLED]
        for label in schema.LABELS:
            got = row[schema.label_column(label, "negbio")]
            assert same(got, want[label])
            # the CheXpert columns keep their names and values
            assert same(row[label], summary.labels[row["study_id"]][label])
            cells += 1
            differ += not same(got, row[label])
    assert 0.01 <= differ / cells <= 0.1, (differ, cells)
    assert info["negbio"]["studies_labelled"] == studies.height
    assert set(info["negbio"]["labels"]) == set(schema.SPLITS)


def test_negbio_rows_are_checked_like_the_chexpert_file(demo_copy, tmp_path):
    path = demo_copy / f"{schema.NEGBIO_CSV}.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    cells = lines[3].split(",")
    cells[2 + schema.LABELS.index("Edema")] = "2.0"
    lines[3] = ",".join(cells)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(InputError) as err:
        make_manifest(ManifestConfig(raw=demo_copy, out=tmp_path / "m.parquet"))
    assert "negbio" in str(err.value) and "line 4" in str(err.value) and "Edema" in str(err.value)


def test_negbio_study_without_a_row_is_marked_unlabelled(built, demo_copy, tmp_path):
    dropped = built[2]["study_id"][0]  # a selected study
    path = demo_copy / f"{schema.NEGBIO_CSV}.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    kept = [ln for ln in lines if ln.split(",")[1] != str(dropped)]
    assert len(kept) == len(lines) - 1
    path.write_bytes(gzip.compress(("\n".join(kept) + "\n").encode()))
    out = tmp_path / "m.parquet"
    _, info = make_manifest(ManifestConfig(raw=demo_copy, out=out))
    manifest = pl.read_parquet(out)
    row = manifest.filter(pl.col("study_id") == dropped)
    assert row.height and not row[schema.NEGBIO_LABELLED].any()
    values = row.select(pl.col("^negbio_.*$").exclude(schema.NEGBIO_LABELLED)).row(0)
    assert all(v is None or math.isnan(v) for v in values)
    assert info["negbio"]["studies_without_row"] == 1
    assert manifest.filter(pl.col("study_id") != dropped)[schema.NEGBIO_LABELLED].all()
    assert json.loads((tmp_path / "manifest.json").read_text())["negbio"] == info["negbio"]

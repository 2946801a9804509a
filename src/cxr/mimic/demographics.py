"""Demographics from MIMIC-IV, joined to MIMIC-CXR studies by `subject_id`.

MIMIC-CXR-JPG carries no demographics. MIMIC-IV (a separate PhysioNet project) does, in
`hosp/patients.csv.gz` (sex, and an age anchored to one shifted year) and `hosp/admissions.csv.gz`
(one row per hospital admission, with race and insurance as recorded at that admission). Both
projects shift a patient's dates by the same amount, so a study's shifted `StudyDate` and MIMIC-IV's
shifted years can be compared directly.

Per study (`study_demographics`):

- `sex`: "Female" or "Male" from `gender` (F/M).
- `age_at_study` = `anchor_age` + (study year - `anchor_year`): a year-level rule, so a study on the
  last day of `anchor_year` and one on the first day of the next year are one year apart in age.
- `age_group`: 0-20, 20-40, 40-60, 60-80, 80+ (each from its lower bound, up to but excluding the
  next; MIMIC-IV holds adults, so 0-20 holds 18 and 19).
- `race_group`: each admission's value mapped to a group (`RACE_GROUPS`, `race_group_of`); the
  patient's group is the most frequent one other than Unknown, a tie going to the group of the most
  recent admission among the tied groups, Unknown when no admission has a known value. MIMIC-IV 1.0
  names the column `ethnicity`; it is read the same way.
- `insurance`: as recorded at the admission nearest the study (distance 0 when the study falls
  within the stay, else to the nearer end of the stay; ties to the more recent admission).

A patient absent from MIMIC-IV is Unknown in every column (and `age_at_study` null); one present in
`patients` but with no admission has a sex and an age but an Unknown race group and insurance.

These columns are quasi-identifiers: they are written to the manifest (under data/) and nowhere
else; evaluation outputs carry aggregates over cells of at least `--min-cell` patients only.

Readers check every column they use, by name, and raise a one-line `InputError` naming the file,
the line and the column; a subject_id is never shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cxr.core.errors import InputError
from cxr.mimic import schema
from cxr.mimic.tables import LINE, check_columns, check_ids, check_unique, read_csv_text

# Versions `cxr download demographics` knows are schema.MIMIC_IV_VERSIONS; a newer one found on
# disk is read all the same. MIMIC-IV 1.0 kept patients and admissions in a `core` module (merged
# into `hosp` in 2.0).
MIMIC_IV_DIR = schema.MIMIC_IV_DIR
MODULE = schema.MIMIC_IV_MODULE
MODULE_1_0 = schema.MIMIC_IV_MODULE_1_0
PATIENTS = schema.MIMIC_IV_PATIENTS
ADMISSIONS = schema.MIMIC_IV_ADMISSIONS

UNKNOWN = "Unknown"
SEX_VALUES: dict[str, str] = {"F": "Female", "M": "Male"}
# (name, lower bound, upper bound excluded; None: no upper bound)
AGE_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("0-20", 0, 20),
    ("20-40", 20, 40),
    ("40-60", 40, 60),
    ("60-80", 60, 80),
    ("80+", 80, None),
)
# Ages outside this range mean a broken join (a study dated long before the patient's anchor
# year): the age is left out (null, group Unknown) and counted.
PLAUSIBLE_AGE = (0, 130)

# MIMIC-IV's race values (2.x and later; 1.0's `ethnicity` uses a subset) and their groups.
RACE_GROUPS: dict[str, tuple[str, ...]] = {
    "White": (
        "WHITE",
        "WHITE - OTHER EUROPEAN",
        "WHITE - RUSSIAN",
        "WHITE - EASTERN EUROPEAN",
        "WHITE - BRAZILIAN",
        "PORTUGUESE",
    ),
    "Black": (
        "BLACK/AFRICAN AMERICAN",
        "BLACK/CAPE VERDEAN",
        "BLACK/CARIBBEAN ISLAND",
        "BLACK/AFRICAN",
    ),
    "Hispanic/Latino": ("HISPANIC OR LATINO", "HISPANIC/LATINO", "SOUTH AMERICAN"),
    "Asian": ("ASIAN",),
    "American Indian/Alaska Native": ("AMERICAN INDIAN/ALASKA NATIVE",),
    "Other": ("NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", "MULTIPLE RACE/ETHNICITY", "OTHER"),
    UNKNOWN: ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER"),
}
# Every "<prefix><detail>" value belongs to the prefix's group (HISPANIC/LATINO - PUERTO RICAN...).
RACE_PREFIXES: dict[str, str] = {"HISPANIC/LATINO - ": "Hispanic/Latino", "ASIAN - ": "Asian"}
RACE_GROUP_ORDER: tuple[str, ...] = tuple(RACE_GROUPS)
_RACE_OF_VALUE = {value: group for group, values in RACE_GROUPS.items() for value in values}

# The manifest's demographic columns (evaluation groups by all but the age itself).
COLUMNS: tuple[str, ...] = ("sex", "age_at_study", "age_group", "race_group", "insurance")

_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")


def race_group_of(value: str | None) -> str:
    """The group of one admission's race (or 1.0 ethnicity) value; Unknown for blank or unlisted."""
    if value is None:
        return UNKNOWN
    text = value.strip().upper()
    if text in _RACE_OF_VALUE:
        return _RACE_OF_VALUE[text]
    for prefix, group in RACE_PREFIXES.items():
        if text.startswith(prefix):
            return group
    return UNKNOWN


def _mapped_expr(column: str) -> pl.Expr:
    """The group of each value, null where the mapping does not list the value (or it is blank)."""
    text = pl.col(column).str.strip_chars().str.to_uppercase()
    expr = text.replace_strict(_RACE_OF_VALUE, default=None, return_dtype=pl.String)
    for prefix, group in RACE_PREFIXES.items():
        expr = (
            pl.when(expr.is_null() & text.str.starts_with(prefix))
            .then(pl.lit(group))
            .otherwise(expr)
        )
    return expr


def _race_expr(column: str) -> pl.Expr:
    """`race_group_of` over a column."""
    return _mapped_expr(column).fill_null(UNKNOWN)


def _unlisted_expr(column: str) -> pl.Expr:
    """True for a non-blank value the mapping does not list (counted as Unknown, and named)."""
    text = pl.col(column).str.strip_chars()
    return text.is_not_null() & (text != "") & _mapped_expr(column).is_null()


def age_group_expr(age: pl.Expr) -> pl.Expr:
    """The age group of an integer age (Unknown when null)."""
    expr = pl.lit(UNKNOWN)
    for name, lo, hi in reversed(AGE_GROUPS):
        cond = age >= lo if hi is None else (age >= lo) & (age < hi)
        expr = pl.when(cond).then(pl.lit(name)).otherwise(expr)
    return expr


# --------------------------------------------------------------------------- finding the files


@dataclass(frozen=True)
class DemographicsFiles:
    version: str
    patients: Path
    admissions: Path


def _find_in(directory: Path, name: str) -> Path | None:
    for module in (MODULE, MODULE_1_0):
        for candidate in (directory / module / name, directory / module / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def find_demographics(raw: Path, version: str | None = None) -> DemographicsFiles | None:
    """The patients and admissions files under `<raw>/mimiciv/<version>/hosp/` (`core/` for 1.0;
    `.csv.gz` or `.csv`); with no version, the newest version that has both. None when absent."""
    root = Path(raw) / MIMIC_IV_DIR
    if version is not None:
        candidates = [version]
    elif root.is_dir():
        candidates = sorted(
            (p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)),
            key=_version_key,
            reverse=True,
        )
    else:
        candidates = []
    for v in candidates:
        patients = _find_in(root / v, PATIENTS)
        admissions = _find_in(root / v, ADMISSIONS)
        if patients is not None and admissions is not None:
            return DemographicsFiles(v, patients, admissions)
    return None


# --------------------------------------------------------------------------- reading


def _first_bad(path: Path, df: pl.DataFrame, bad: pl.Expr, column: str, message: str) -> None:
    rows = df.filter(bad)
    if rows.height:
        more = f" (and {rows.height - 1} more)" if rows.height > 1 else ""
        raise InputError(f"{path}: line {rows[LINE][0]}: column '{column}': {message}{more}")


def _raise_first(problems) -> None:
    if problems:
        raise InputError(str(problems[0]))


def read_patients(path: Path) -> pl.DataFrame:
    """`subject_id` (Int64), `gender` ("F"/"M"), `anchor_age`, `anchor_year` (Int64), checked."""
    path = Path(path)
    df = read_csv_text(path)
    _raise_first(
        check_columns(df, ("subject_id", "gender", "anchor_age", "anchor_year"), str(path))
    )
    _raise_first(check_ids(df.select("subject_id", LINE), str(path)))
    _first_bad(
        path,
        df,
        ~pl.col("gender").is_in(list(SEX_VALUES)) | pl.col("gender").is_null(),
        "gender",
        "gender is not F or M",
    )
    for column, pattern, what in (
        ("anchor_age", r"^\d{1,3}$", "an age in years"),
        ("anchor_year", r"^\d{4}$", "a four-digit year"),
    ):
        value = pl.col(column)
        _first_bad(
            path,
            df,
            value.is_null() | ~value.str.contains(pattern),
            column,
            f"{column} is not {what}",
        )
    _raise_first(check_unique(df, ["subject_id"], str(path)))
    return df.select(
        pl.col("subject_id").cast(pl.Int64),
        "gender",
        pl.col("anchor_age").cast(pl.Int64),
        pl.col("anchor_year").cast(pl.Int64),
    )


def race_column(columns: list[str], path: Path) -> str:
    """`race` (MIMIC-IV 2.0 and later) or `ethnicity` (1.0)."""
    if "race" in columns:
        return "race"
    if "ethnicity" in columns:
        return "ethnicity"
    raise InputError(f"{path}: missing column 'race' (or 'ethnicity', its name in MIMIC-IV 1.0)")


def read_admissions(path: Path) -> pl.DataFrame:
    """`subject_id`, `hadm_id` (Int64, null when absent), `admittime`, `dischtime` (Datetime;
    a blank dischtime is the admittime), `insurance`, `race` (the raw value, whichever of `race` or
    1.0's `ethnicity` the file has), checked."""
    path = Path(path)
    df = read_csv_text(path)
    race = race_column(df.columns, path)
    _raise_first(
        check_columns(df, ("subject_id", "admittime", "dischtime", "insurance"), str(path))
    )
    _raise_first(check_ids(df.select("subject_id", LINE), str(path)))
    for column in ("admittime", "dischtime"):
        parsed = pl.col(column).str.strptime(pl.Datetime, _DATETIME_FORMAT, strict=False)
        blank = pl.col(column).is_null() | (pl.col(column).str.strip_chars() == "")
        bad = parsed.is_null() & (~blank if column == "dischtime" else pl.lit(True))
        _first_bad(path, df, bad, column, f"{column} is not a time like 2180-05-06 22:23:00")
    hadm = (
        pl.col("hadm_id").cast(pl.Int64, strict=False)
        if "hadm_id" in df.columns
        else pl.lit(None, dtype=pl.Int64)
    )
    admit = pl.col("admittime").str.strptime(pl.Datetime, _DATETIME_FORMAT, strict=False)
    discharge = pl.col("dischtime").str.strptime(pl.Datetime, _DATETIME_FORMAT, strict=False)
    return df.select(
        pl.col("subject_id").cast(pl.Int64),
        hadm.alias("hadm_id"),
        admit.alias("admittime"),
        pl.coalesce(discharge, admit).alias("dischtime"),
        pl.col("insurance"),
        pl.col(race).alias("race"),
    )


# --------------------------------------------------------------------------- table logic (pure)


def patient_race(admissions: pl.DataFrame) -> pl.DataFrame:
    """`subject_id`, `race_group` for every patient with an admission (rule: module docstring)."""
    known = admissions.with_columns(_race_expr("race").alias("race_group")).filter(
        pl.col("race_group") != UNKNOWN
    )
    ranked = (
        known.group_by("subject_id", "race_group")
        .agg(
            pl.len().alias("n"),
            pl.col("admittime").max().alias("latest"),
            pl.col("hadm_id").max().alias("latest_hadm"),
        )
        .sort(
            ["subject_id", "n", "latest", "latest_hadm", "race_group"],
            descending=[False, True, True, True, False],
            nulls_last=True,
        )
        .unique("subject_id", keep="first", maintain_order=True)
        .select("subject_id", "race_group")
    )
    everyone = admissions.select("subject_id").unique().sort("subject_id")
    return everyone.join(ranked, on="subject_id", how="left").with_columns(
        pl.col("race_group").fill_null(UNKNOWN)
    )


def nearest_insurance(studies: pl.DataFrame, admissions: pl.DataFrame) -> pl.DataFrame:
    """`study_id`, `insurance`: that of the admission nearest each study's `study_time`.

    `studies` has `study_id`, `subject_id` and `study_time` (Datetime, null when unknown). The
    distance is 0 within a stay, else to the nearer end of it; ties go to the more recent
    admission. Unknown without an admission, without a study time, or when the value is blank.
    """
    t = pl.col("study_time")
    distance = (
        pl.when(t < pl.col("admittime"))
        .then(pl.col("admittime") - t)
        .when(t > pl.col("dischtime"))
        .then(t - pl.col("dischtime"))
        .otherwise(pl.duration(seconds=0))
    )
    pairs = (
        studies.filter(t.is_not_null())
        .select("study_id", "subject_id", "study_time")
        .join(
            admissions.select("subject_id", "hadm_id", "admittime", "dischtime", "insurance"),
            on="subject_id",
            how="inner",
        )
        .with_columns(distance.alias("_distance"))
        .sort(
            ["study_id", "_distance", "admittime", "hadm_id"],
            descending=[False, False, True, True],
            nulls_last=True,
        )
        .unique("study_id", keep="first", maintain_order=True)
    )
    value = pl.col("insurance").str.strip_chars()
    chosen = pairs.select(
        "study_id",
        pl.when(value.is_null() | (value == ""))
        .then(pl.lit(UNKNOWN))
        .otherwise(value)
        .alias("insurance"),
    )
    return (
        studies.select("study_id")
        .join(chosen, on="study_id", how="left")
        .with_columns(pl.col("insurance").fill_null(UNKNOWN))
    )


def study_times(metadata: pl.DataFrame) -> pl.DataFrame:
    """`study_id`, `study_time`: each study's earliest image time from the metadata's `StudyDate`
    (YYYYMMDD) and `StudyTime` (a float such as 80556.875, zero-padded to HHMMSS); null when the
    date cannot be read (a time that cannot be read counts as midnight)."""
    date = pl.col("StudyDate").str.strip_chars().str.strptime(pl.Date, "%Y%m%d", strict=False)
    whole = pl.col("StudyTime").str.strip_chars().str.split(".").list.first().str.zfill(6)
    clock = whole.str.strptime(pl.Time, "%H%M%S", strict=False)
    stamp = date.dt.combine(clock.fill_null(pl.time(0, 0, 0)))
    return (
        metadata.select("study_id", stamp.alias("study_time"))
        .group_by("study_id")
        .agg(pl.col("study_time").min())
    )


@dataclass
class DemographicsSummary:
    """Counts for the manifest's summary (no identifier)."""

    version: str
    patients: int = 0
    absent: int = 0  # manifest patients not in MIMIC-IV's patients file (all Unknown)
    without_admissions: int = 0  # in patients, but no admission (race and insurance Unknown)
    race_unknown: int = 0  # patients whose race group is Unknown (absent ones included)
    implausible_ages: int = 0  # studies whose computed age fell outside PLAUSIBLE_AGE
    undated_studies: int = 0  # studies without a readable StudyDate (age, insurance Unknown)
    unlisted_race_values: dict[str, int] = field(default_factory=dict)  # value -> admissions

    def to_dict(self) -> dict:
        return {
            "mimic_iv_version": self.version,
            "patients": self.patients,
            "absent_from_mimic_iv": self.absent,
            "without_admissions": self.without_admissions,
            "race_unknown": self.race_unknown,
            "implausible_ages": self.implausible_ages,
            "undated_studies": self.undated_studies,
            "unlisted_race_values": self.unlisted_race_values,
        }


def study_demographics(
    studies: pl.DataFrame, patients: pl.DataFrame, admissions: pl.DataFrame, version: str = ""
) -> tuple[pl.DataFrame, DemographicsSummary]:
    """One row per study: `study_id` and the `COLUMNS`; plus the summary counts.

    `studies`: `study_id`, `subject_id`, `study_time` (Datetime or null). `patients` and
    `admissions` as `read_patients` and `read_admissions` return them (any patients: only those
    of the studies are used).
    """
    subjects = studies.select("subject_id").unique()
    patients = patients.join(subjects, on="subject_id", how="semi")
    admissions = admissions.join(subjects, on="subject_id", how="semi")
    year = pl.col("study_time").dt.year().cast(pl.Int64)
    raw_age = pl.col("anchor_age") + (year - pl.col("anchor_year"))
    lo, hi = PLAUSIBLE_AGE
    table = (
        studies.select("study_id", "subject_id", "study_time")
        .join(patients, on="subject_id", how="left")
        .with_columns(raw_age.alias("_age"))
        .with_columns(
            pl.when(pl.col("_age").is_between(lo, hi))
            .then(pl.col("_age"))
            .otherwise(None)
            .alias("age_at_study"),
        )
        .with_columns(
            pl.col("gender")
            .replace_strict(SEX_VALUES, default=UNKNOWN, return_dtype=pl.String)
            .fill_null(UNKNOWN)
            .alias("sex"),
            age_group_expr(pl.col("age_at_study")).alias("age_group"),
        )
        .join(patient_race(admissions), on="subject_id", how="left")
        .with_columns(pl.col("race_group").fill_null(UNKNOWN))
        .join(nearest_insurance(studies, admissions), on="study_id", how="left")
    )
    in_patients = set(patients["subject_id"].to_list())
    with_admissions = set(admissions["subject_id"].to_list())
    all_subjects = set(subjects["subject_id"].to_list())
    per_patient_race = table.unique("subject_id").filter(pl.col("race_group") == UNKNOWN)
    unlisted = admissions.filter(_unlisted_expr("race"))
    summary = DemographicsSummary(
        version=version,
        patients=len(all_subjects),
        absent=len(all_subjects - in_patients),
        without_admissions=len(in_patients - with_admissions),
        race_unknown=per_patient_race.height,
        implausible_ages=table.filter(
            pl.col("_age").is_not_null() & pl.col("age_at_study").is_null()
        ).height,
        undated_studies=table.filter(pl.col("study_time").is_null()).height,
        unlisted_race_values=dict(
            sorted(
                unlisted.group_by("race").len().iter_rows(),
                key=lambda kv: (-kv[1], kv[0]),
            )
        ),
    )
    out = table.select(
        "study_id",
        "sex",
        pl.col("age_at_study").cast(pl.Int32),
        "age_group",
        "race_group",
        "insurance",
    )
    return out, summary


def load_demographics(files: DemographicsFiles) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(patients, admissions), read and checked."""
    return read_patients(files.patients), read_admissions(files.admissions)


def demographics_help(raw: Path, version: str | None = None) -> str:
    """What to do when the files are missing."""
    where = Path(raw) / MIMIC_IV_DIR / (version or "<version>") / MODULE
    option = f" --mimic-iv-version {version}" if version else ""
    return (
        f"{where}: no MIMIC-IV demographics ({PATIENTS} and {ADMISSIONS}); "
        f"run `cxr download demographics{option}`"
    )

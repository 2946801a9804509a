"""Read and check MIMIC-CXR-JPG's three CSVs (chexpert, split, metadata).

Every column is read by name as text first, checked, then cast, so that a bad value is reported with
its file, column and line instead of turning into a silent null. Checks return `Problem`s (verify
lists them all); `load_tables(..., strict=True)` raises the first one as a one-line `InputError`
(manifest stops). No message ever contains a subject_id value.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from cxr.core.errors import RAW_MAKERS, InputError, MissingInput
from cxr.mimic import schema

LINE = "_line"  # 1-based line number in the file (the header is line 1)


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    column: str | None = None
    line: int | None = None
    more: int = 0  # further rows with the same problem

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        text = ": ".join(parts) + f": {self.message}"
        if self.more:
            text += f" (and {self.more} more)"
        return text


@dataclass
class RawTables:
    """The three CSVs, typed. Ids are Int64, labels Float32 (1/0/-1/NaN), split a string."""

    chexpert: pl.DataFrame
    split: pl.DataFrame
    metadata: pl.DataFrame
    paths: dict[str, Path]


def locate_csv(raw: Path, name: str) -> Path | None:
    """The file as PhysioNet ships it (`.csv.gz`) or as the data guide names it (`.csv`)."""
    for candidate in (raw / f"{name}.gz", raw / name):
        if candidate.is_file():
            return candidate
    return None


def read_csv_text(path: Path) -> pl.DataFrame:
    """All columns as strings, plus the line number; a one-line InputError for unreadable files."""
    try:
        df = pl.read_csv(
            path,
            infer_schema=False,
            row_index_name=LINE,
            row_index_offset=2,
        )
    except pl.exceptions.NoDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (OSError, pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if path.suffix == ".gz":
            reason = f"cannot decompress or parse (corrupt or truncated gzip?): {reason}"
        raise InputError(f"{path}: {reason}") from None
    if df.height == 0:
        raise InputError(f"{path}: no data rows (header only)")
    return df


def _first(file: str, df: pl.DataFrame, column: str | None, message: str) -> list[Problem]:
    if df.height == 0:
        return []
    return [Problem(file, message, column, int(df[LINE][0]), more=df.height - 1)]


def check_columns(df: pl.DataFrame, required: tuple[str, ...], file: str) -> list[Problem]:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return []
    names = ", ".join(f"'{c}'" for c in missing)
    return [Problem(file, f"missing column{'s' if len(missing) > 1 else ''} {names}")]


_ID_PATTERNS = {
    "subject_id": schema.SUBJECT_ID_RE.pattern,
    "study_id": schema.STUDY_ID_RE.pattern,
    "dicom_id": schema.DICOM_ID_RE.pattern,
}
_ID_SHAPES = {
    "subject_id": "8 digits starting with 1",
    "study_id": "8 digits starting with 5",
    "dicom_id": "five dash-separated groups of 8 hex digits",
}


def check_ids(df: pl.DataFrame, file: str) -> list[Problem]:
    problems: list[Problem] = []
    for col, pattern in _ID_PATTERNS.items():
        if col not in df.columns:
            continue
        bad = df.filter(pl.col(col).is_null() | ~pl.col(col).str.contains(pattern))
        # The value is only shown for non-identifying ids; a subject_id is never echoed.
        shown = "" if col == "subject_id" or bad.height == 0 else f" {bad[col][0]!r}"
        problems += _first(file, bad, col, f"malformed {col}{shown} (expected {_ID_SHAPES[col]})")
    return problems


def check_labels(df: pl.DataFrame, file: str) -> list[Problem]:
    problems: list[Problem] = []
    for label in schema.LABELS:
        if label not in df.columns:
            continue
        bad = df.filter(pl.col(label).is_not_null() & ~pl.col(label).is_in(schema.LABEL_TEXTS))
        if bad.height:
            value = bad[label][0]
            problems += _first(file, bad, label, f"label value {value!r} is not 1, 0, -1 or blank")
    if schema.NO_FINDING in df.columns:
        bad = df.filter(pl.col(schema.NO_FINDING).is_in(["0", "0.0", "-1", "-1.0"]))
        problems += _first(file, bad, schema.NO_FINDING, "No Finding is only ever 1 or blank")
    return problems


def check_unique(df: pl.DataFrame, keys: list[str], file: str) -> list[Problem]:
    if not all(k in df.columns for k in keys):
        return []
    dup = df.filter(pl.struct(keys).is_duplicated()).sort(LINE)
    if dup.height == 0:
        return []
    key_desc = ", ".join(keys)
    # Name the duplicate by its non-identifying part only.
    shown = next((f" ({k} {dup[k][0]})" for k in ("dicom_id", "study_id") if k in keys), "")
    return _first(file, dup, None, f"duplicate key ({key_desc}){shown}")


def check_split_values(df: pl.DataFrame, file: str) -> list[Problem]:
    if "split" not in df.columns:
        return []
    bad = df.filter(pl.col("split").is_null() | ~pl.col("split").is_in(list(schema.SPLITS)))
    shown = "" if bad.height == 0 else f" {bad['split'][0]!r}"
    return _first(
        file, bad, "split", f"unknown split value{shown} (expected train, validate or test)"
    )


def check_split_in_metadata(split: pl.DataFrame, meta: pl.DataFrame, file: str) -> list[Problem]:
    if "dicom_id" not in split.columns or "dicom_id" not in meta.columns:
        return []
    absent = split.join(meta.select("dicom_id"), on="dicom_id", how="anti").sort(LINE)
    if absent.height == 0:
        return []
    return _first(
        file, absent, "dicom_id", f"image {absent['dicom_id'][0]} is not listed in the metadata"
    )


def check_patient_splits(split: pl.DataFrame, file: str) -> list[Problem]:
    """The official split is patient-disjoint; a patient in two splits is leakage."""
    if not {"subject_id", "study_id", "split"} <= set(split.columns):
        return []
    crossing = (
        split.group_by("subject_id")
        .agg(pl.col("split").n_unique().alias("n"))
        .filter(pl.col("n") > 1)
    )
    if crossing.height == 0:
        return []
    studies = (
        split.join(crossing.select("subject_id"), on="subject_id")
        .select("study_id")
        .unique()
        .sort("study_id")["study_id"]
        .to_list()
    )
    shown = ", ".join(str(s) for s in studies[:10]) + (" ..." if len(studies) > 10 else "")
    return [
        Problem(
            file,
            f"{crossing.height} patient(s) appear in more than one split (studies {shown})",
            "split",
        )
    ]


# Column names of the metadata's ids once the split rows are joined to it by dicom_id.
META_STUDY = "_meta_study"
META_SUBJECT = "_meta_subject"


def split_metadata_disagreements(both: pl.DataFrame, file: str, meta_file: str) -> list[Problem]:
    """Images listed in both files whose study or patient differ between them: the manifest joins
    the files by dicom_id and would otherwise file such an image under the wrong study.

    `both` holds split rows joined to the metadata by dicom_id: the split's `study_id`,
    `subject_id` and LINE, the metadata's as META_STUDY and META_SUBJECT. The manifest passes the
    join it makes anyway; `check_split_metadata_agree` makes it for `cxr verify`.
    """
    differ = both.filter(
        (pl.col("study_id") != pl.col(META_STUDY)) | (pl.col("subject_id") != pl.col(META_SUBJECT))
    ).sort(LINE)
    if differ.height == 0:
        return []
    first = differ.row(0, named=True)
    # Name the column that differs; never show the subject_id values themselves.
    column = "study_id" if first["study_id"] != first[META_STUDY] else "subject_id"
    return _first(
        file,
        differ,
        column,
        f"image {first['dicom_id']} has another study or patient in {Path(meta_file).name}",
    )


def check_split_metadata_agree(
    split: pl.DataFrame, meta: pl.DataFrame, file: str, meta_file: str
) -> list[Problem]:
    """`split_metadata_disagreements` over the two frames."""
    cols = {"dicom_id", "study_id", "subject_id"}
    if not (cols <= set(split.columns) and cols <= set(meta.columns)):
        return []
    both = split.select("dicom_id", "study_id", "subject_id", LINE).join(
        meta.select(
            "dicom_id",
            pl.col("study_id").alias(META_STUDY),
            pl.col("subject_id").alias(META_SUBJECT),
        ),
        on="dicom_id",
        how="inner",
    )
    return split_metadata_disagreements(both, file, meta_file)


def check_label_subjects(chexpert: pl.DataFrame, split: pl.DataFrame, file: str) -> list[Problem]:
    """A study's label row must be filed under the patient the split file gives the study: a row
    under another subject_id is a broken file, not a label to borrow."""
    if not (
        {"subject_id", "study_id"} <= set(chexpert.columns)
        and {"subject_id", "study_id"} <= set(split.columns)
    ):
        return []
    studies = split.select("study_id", pl.col("subject_id").alias("_split_subject")).unique()
    differ = (
        chexpert.select("study_id", "subject_id", LINE)
        .join(studies, on="study_id", how="inner")
        .filter(pl.col("subject_id") != pl.col("_split_subject"))
        .unique(subset="study_id", keep="first")
        .sort(LINE)
    )
    if differ.height == 0:
        return []
    return _first(
        file,
        differ,
        "subject_id",
        f"study {differ['study_id'][0]} has its label row under another patient than in the "
        "split file",
    )


def check_cross_files(frames: dict[str, pl.DataFrame], names: dict[str, str]) -> list[Problem]:
    """The checks between files: each label row under its study's patient, each image under the
    same study and patient in split and metadata, and every split image in the metadata.

    The manifest runs the first two itself (`load_tables` on the typed frames, `join_images` on
    the join it makes anyway) and counts the third as an exclusion, so `cxr verify` rejects what
    `cxr manifest` rejects, through the same functions.
    """
    problems: list[Problem] = []
    if "split" not in frames:
        return problems
    if "chexpert" in frames:
        problems += check_label_subjects(frames["chexpert"], frames["split"], names["chexpert"])
    if "metadata" in frames:
        problems += check_split_metadata_agree(
            frames["split"], frames["metadata"], names["split"], names["metadata"]
        )
        problems += check_split_in_metadata(frames["split"], frames["metadata"], names["split"])
    return problems


def check_all(
    frames: dict[str, pl.DataFrame], names: dict[str, str], cross: bool = True
) -> list[Problem]:
    """Every schema check over whichever of the three frames were read.

    cross: also the checks between files (`check_cross_files`); the manifest runs them its own
    way, so `load_tables` turns this off.
    """
    problems: list[Problem] = []
    required = {
        "chexpert": schema.CHEXPERT_COLUMNS,
        "split": schema.SPLIT_COLUMNS,
        "metadata": schema.METADATA_COLUMNS,
    }
    keys = {"chexpert": ["subject_id", "study_id"], "split": ["dicom_id"], "metadata": ["dicom_id"]}
    duplicates: dict[str, list[Problem]] = {}
    for kind, df in frames.items():
        file = names[kind]
        problems += check_columns(df, required[kind], file)
        problems += check_ids(df, file)
        duplicates[kind] = check_unique(df, keys[kind], file)
        problems += duplicates[kind]
    if "chexpert" in frames:
        problems += check_labels(frames["chexpert"], names["chexpert"])
        # A study's labels are one row; the same study_id under two subjects is also a duplicate
        # (checked only when no row repeats whole, so one duplicated row is one problem, not two).
        if not duplicates["chexpert"]:
            problems += check_unique(frames["chexpert"], ["study_id"], names["chexpert"])
    if "split" in frames:
        problems += check_split_values(frames["split"], names["split"])
        problems += check_patient_splits(frames["split"], names["split"])
    if cross:
        problems += check_cross_files(frames, names)
    return problems


def _typed(kind: str, df: pl.DataFrame) -> pl.DataFrame:
    ids = [pl.col(c).cast(pl.Int64) for c in ("subject_id", "study_id") if c in df.columns]
    if kind == "chexpert":
        return df.with_columns(*ids, *[pl.col(c).cast(pl.Float32) for c in schema.LABELS])
    if kind == "metadata":
        return df.with_columns(
            *ids,
            pl.col("Rows").cast(pl.Int64, strict=False),
            pl.col("Columns").cast(pl.Int64, strict=False),
        )
    return df.with_columns(*ids)


KINDS = {
    "chexpert": schema.CHEXPERT_CSV,
    "split": schema.SPLIT_CSV,
    "metadata": schema.METADATA_CSV,
}


def read_frames(raw: Path) -> tuple[dict[str, pl.DataFrame], dict[str, str]]:
    """The three CSVs as text frames, read in parallel; InputError if one is missing or unreadable."""
    raw = Path(raw)
    if not raw.exists():
        raise MissingInput(raw, "raw data directory", RAW_MAKERS)
    if not raw.is_dir():
        raise InputError(f"{raw}: not a directory")
    if not os.access(raw, os.R_OK | os.X_OK):
        raise InputError(f"{raw}: directory is not readable (permission denied)")
    paths: dict[str, Path] = {}
    for kind, name in KINDS.items():
        found = locate_csv(raw, name)
        if found is None:
            raise MissingInput(raw / name, f"{name} (or {name}.gz)", RAW_MAKERS)
        paths[kind] = found
    # Decompression and parsing release the GIL: read the three files at once.
    with ThreadPoolExecutor(max_workers=3) as pool:
        frames = dict(zip(KINDS, pool.map(read_csv_text, paths.values()), strict=True))
    return frames, {kind: str(path) for kind, path in paths.items()}


def load_tables(raw: Path) -> RawTables:
    """Read, check and type the three CSVs; the first problem is raised as a one-line InputError.

    Split rows whose image is absent from the metadata are not fatal here: the manifest counts them
    as an exclusion. Label rows are checked against the split file's patients here, on the typed
    frames (integer joins are cheaper); split and metadata are checked against each other where
    the manifest joins them (`split_metadata_disagreements`).
    """
    frames, names = read_frames(raw)
    fatal = check_all(frames, names, cross=False)
    if fatal:
        raise InputError(str(fatal[0]))
    typed = {kind: _typed(kind, df) for kind, df in frames.items()}
    fatal = check_label_subjects(typed["chexpert"], typed["split"], names["chexpert"])
    if fatal:
        raise InputError(str(fatal[0]))
    paths = {kind: Path(name) for kind, name in names.items()}
    return RawTables(typed["chexpert"], typed["split"], typed["metadata"], paths)


def load_negbio(raw: Path, split: pl.DataFrame) -> tuple[pl.DataFrame, Path] | None:
    """The NegBio labels (`mimic-cxr-2.0.0-negbio.csv.gz`, the chexpert file's schema), read,
    checked and typed like the chexpert file, or None when the file is not at the raw root.

    `split` is the typed split frame: a NegBio row filed under another patient than the split
    file gives its study is an error, as for the chexpert file.
    """
    path = locate_csv(Path(raw), schema.NEGBIO_CSV)
    if path is None:
        return None
    df = read_csv_text(path)
    file = str(path)
    problems = check_columns(df, schema.CHEXPERT_COLUMNS, file)
    if not problems:
        problems = check_ids(df, file) + check_unique(df, ["subject_id", "study_id"], file)
        problems += check_labels(df, file)
        if not problems:
            problems = check_unique(df, ["study_id"], file)
    if problems:
        raise InputError(str(problems[0]))
    typed = _typed("chexpert", df)
    fatal = check_label_subjects(typed, split, file)
    if fatal:
        raise InputError(str(fatal[0]))
    return typed.drop(LINE), path

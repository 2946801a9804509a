"""The radiologist-labelled test set of MIMIC-CXR-JPG 2.1.0 as a second source of test labels.

`mimic-cxr-2.1.0-test-set-labeled.csv` (plain CSV at the raw root, beside the other CSVs) holds
studies of the official test split labelled by radiologists instead of by the CheXpert labeler:
a `study_id` column (no `subject_id`) and one column per label, Lung Opacity named
"Airspace Opacity", values 1, 0, -1 or blank as in the chexpert file.

- `find_radiologist_csv(raw_dir)` finds the file (`.csv` as shipped, else `.csv.gz`).
- `read_radiologist_labels(path)` reads and checks it by column name into a `RadiologistLabels`:
  `.table` (`study_id` Int64, then one Float32 column per label the file has, under the CheXpert
  names, in `schema.LABELS` order, values exactly 1.0, 0.0, -1.0 or NaN, sorted by study_id) and
  `.missing_labels` (the CheXpert labels the file lacks). Bad input raises a one-line `InputError`
  naming the file, the line and the column.
- `radiologist_targets(rows, table, labels)` aligns the table with any rows that carry a
  `study_id` (a manifest's images or studies) and returns their radiologist values as an (n, L)
  array, NaN where a study is not in the file or a label is absent from it.

No label policy is applied here (uncertain stays -1, blank stays NaN), and No Finding is not held
to the chexpert file's "only 1 or blank" rule: a radiologist may mark it 0. Nothing here reads a
`subject_id`, so nothing derived from this file can leak one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cxr.core.errors import InputError
from cxr.mimic import schema
from cxr.mimic.tables import LINE, read_csv_text

STUDY_ID = "study_id"
# polars renames a repeated header name to `<name>_duplicated_<k>`.
_DUPLICATED_RE = re.compile(r"^(.*)_duplicated_\d+$")


@dataclass(frozen=True)
class RadiologistLabels:
    """The radiologist labels of one file.

    table: `study_id` (Int64), then a Float32 column per label present, under its CheXpert name,
      in `schema.LABELS` order; values 1.0, 0.0, -1.0 or NaN (blank); sorted by study_id.
    missing_labels: the CheXpert labels the file has no column for (not in `table`).
    path: the file read.
    """

    table: pl.DataFrame
    missing_labels: tuple[str, ...]
    path: Path

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels present, in `schema.LABELS` order."""
        return tuple(c for c in self.table.columns if c != STUDY_ID)

    @property
    def study_ids(self) -> frozenset[int]:
        return frozenset(self.table[STUDY_ID].to_list())


def find_radiologist_csv(raw_dir: str | Path) -> Path | None:
    """The radiologist file at the raw root: `.csv` as PhysioNet ships it, else `.csv.gz`."""
    raw = Path(raw_dir)
    for candidate in (raw / schema.RADIOLOGIST_CSV, raw / f"{schema.RADIOLOGIST_CSV}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fail(path: Path, line: int, column: str, message: str) -> InputError:
    return InputError(f"{path}: line {line}: column '{column}': {message}")


def _label_columns(path: Path, columns: list[str]) -> dict[str, str]:
    """CheXpert label name -> the file's column holding it; refuses repeated or aliased twice."""
    wanted = {STUDY_ID, *schema.LABELS, *schema.RADIOLOGIST_ALIASES}
    for col in columns:
        m = _DUPLICATED_RE.match(col)
        if m and m.group(1) in wanted:
            raise _fail(path, 1, m.group(1), "the header names this column more than once")
    if STUDY_ID not in columns:
        raise _fail(path, 1, STUDY_ID, "missing column (columns are read by name)")
    found: dict[str, str] = {}
    for col in columns:
        name = schema.RADIOLOGIST_ALIASES.get(col, col)
        if name not in schema.LABELS:
            continue  # unknown extra columns are ignored
        if name in found:
            raise _fail(
                path, 1, col, f"'{found[name]}' and '{col}' are the same label ({name}); keep one"
            )
        found[name] = col
    return found


def read_radiologist_labels(path: str | Path) -> RadiologistLabels:
    """Read and check the radiologist file (see the module docstring); one-line InputError if bad.

    Refused: no `study_id` column; both "Airspace Opacity" and "Lung Opacity" (or a repeated
    column); a study_id that is not 8 digits starting with 5; a label value other than 1, 1.0, 0,
    0.0, -1, -1.0 or blank; a study_id on two lines. Unknown extra columns are ignored.
    """
    path = Path(path)
    df = read_csv_text(path)  # every column as text, plus the line number; InputError if unreadable
    found = _label_columns(path, df.columns)

    ids = df[STUDY_ID]
    bad = df.filter(ids.is_null() | ~ids.str.contains(schema.STUDY_ID_RE.pattern))
    if bad.height:
        raise _fail(
            path,
            int(bad[LINE][0]),
            STUDY_ID,
            f"malformed study_id {bad[STUDY_ID][0]!r} (expected 8 digits starting with 5)",
        )
    dup = df.filter(pl.col(STUDY_ID).is_duplicated()).sort(LINE)
    if dup.height:
        study = dup[STUDY_ID][0]
        lines = dup.filter(pl.col(STUDY_ID) == study)[LINE].to_list()
        raise _fail(
            path,
            int(lines[1]),
            STUDY_ID,
            f"study {study} is listed again (first on line {lines[0]})",
        )
    for col in found.values():  # blank is a null or an empty quoted field
        value = pl.col(col)
        bad = df.filter(value.is_not_null() & (value != "") & ~value.is_in(schema.LABEL_TEXTS))
        if bad.height:
            raise _fail(
                path,
                int(bad[LINE][0]),
                col,
                f"label value {bad[col][0]!r} is not 1, 0, -1 or blank",
            )

    labels = [name for name in schema.LABELS if name in found]
    table = df.select(
        pl.col(STUDY_ID).cast(pl.Int64),
        *[
            pl.when(pl.col(found[name]) == "")
            .then(None)
            .otherwise(pl.col(found[name]))
            .cast(pl.Float32)
            .fill_null(float("nan"))
            .alias(name)
            for name in labels
        ],
    ).sort(STUDY_ID)
    missing = tuple(name for name in schema.LABELS if name not in found)
    return RadiologistLabels(table=table, missing_labels=missing, path=path)


def radiologist_targets(
    manifest_rows: pl.DataFrame, table: pl.DataFrame, labels: list[str] | tuple[str, ...]
) -> np.ndarray:
    """The radiologist values for `manifest_rows`, row for row: an (n, len(labels)) float64 array.

    manifest_rows: any frame with a `study_id` column (images or studies, in any order, repeats
      allowed); only that column is read. table: `RadiologistLabels.table`. labels: CheXpert
      names ("Airspace Opacity" is taken as "Lung Opacity"). A row whose study is not in the table,
      or a label the table lacks, is NaN; otherwise the value as read (1, 0, -1 or NaN for blank),
      so the caller applies its own target rule and scores the studies both sources cover.
    """
    if STUDY_ID not in manifest_rows.columns:
        raise ValueError("radiologist_targets: the rows need a study_id column")
    names = [schema.RADIOLOGIST_ALIASES.get(lab, lab) for lab in labels]
    present = [n for n in dict.fromkeys(names) if n in table.columns and n != STUDY_ID]
    keys = manifest_rows.select(pl.col(STUDY_ID).cast(pl.Int64)).with_row_index("_row")
    right = table.select(pl.col(STUDY_ID).cast(pl.Int64), *present)
    joined = keys.join(right, on=STUDY_ID, how="left").sort("_row")
    out = np.full((manifest_rows.height, len(names)), np.nan, dtype=np.float64)
    for j, name in enumerate(names):
        if name in present:
            out[:, j] = joined[name].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return out

"""The manifest: one row per selected image, from the three CSVs alone.

Selection (docs/architecture.md has the contract later stages rely on): images listed in both
split and metadata, with a selected view, of studies that have a CheXpert row; every validate and
test study is kept, then train studies are sampled with a seeded generator up to `n_studies`.
Labels are copied exactly as in the CSV (1, 0, -1, NaN): the label policy belongs to training and
evaluation, never here.

Two optional sources add columns without changing the selection: the NegBio labels (a second
set of label columns, `negbio_<Label>`, plus `negbio_labelled`) when `mimic-cxr-2.0.0-negbio.csv.gz`
is at the raw root, and MIMIC-IV demographics (`cxr.mimic.demographics.COLUMNS`, per study) when
`<raw>/mimiciv/<version>/hosp/` holds patients and admissions.

The table logic is pure functions over polars frames; `build_manifest` runs them in order and
`write_manifest` writes the parquet and `manifest.json` atomically. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cxr import __version__
from cxr.core.atomic import atomic_path, output_errors, write_text_atomic
from cxr.core.errors import InputError, MissingInput
from cxr.core.hashing import file_sha256
from cxr.mimic import schema
from cxr.mimic.tables import (
    LINE,
    META_STUDY,
    META_SUBJECT,
    RawTables,
    load_tables,
    split_metadata_disagreements,
)

MANIFEST_JSON = "manifest.json"
BASE_COLUMNS = (
    "dicom_id",
    "study_id",
    "subject_id",
    "split",
    "view_position",
    "image_path",
    "report_path",
)
REPORT_SECTIONS = ("findings", "impression", "indication", "comparison")
SOURCE_MODES = ("auto", "require", "off")
NEGBIO_COLUMNS = (
    schema.NEGBIO_LABELLED,
    *(schema.label_column(label, "negbio") for label in schema.LABELS),
)


@dataclass(frozen=True)
class ManifestConfig:
    raw: Path
    out: Path
    n_studies: int = 15000
    seed: int = 0
    views: tuple[str, ...] = ("PA",)
    infer_missing_views: bool = False
    require_reports: bool = False
    # "auto": add the columns when the files are present; "require": fail without them; "off".
    demographics: str = "auto"
    mimic_iv_version: str | None = None  # None: the newest version under <raw>/mimiciv/
    negbio: str = "auto"

    def __post_init__(self) -> None:
        for name in ("demographics", "negbio"):
            if getattr(self, name) not in SOURCE_MODES:
                raise InputError(
                    f"{name}={getattr(self, name)!r}: one of {', '.join(SOURCE_MODES)}"
                )

    def options(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        d.pop("out")
        d["views"] = list(self.views)
        return d


@dataclass
class Exclusions:
    """Images and studies dropped, by reason, in the order the reasons apply."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, reason: str, dropped: pl.DataFrame) -> None:
        if dropped.height == 0:
            return
        self.counts[reason] = {
            "images": dropped.height,
            "studies": dropped["study_id"].n_unique(),
        }


# ---------------------------------------------------------------------------------------------
# Pure table logic


def join_images(tables: RawTables, excl: Exclusions) -> pl.DataFrame:
    """Images in the split file joined to their metadata by dicom_id.

    One full join classifies every image at once: in both, only in split, only in metadata. An
    image whose study or patient differs between the two files is an error
    (`split_metadata_disagreements`, which `cxr verify` runs too).
    """
    meta = tables.metadata.select(
        "dicom_id",
        pl.col("study_id").alias(META_STUDY),
        pl.col("subject_id").alias(META_SUBJECT),
        "ViewPosition",
        "ViewCodeSequence_CodeMeaning",
        pl.col("Rows").alias("rows"),
        pl.col("Columns").alias("columns"),
        "StudyDate",
        "StudyTime",
        pl.lit(True).alias("_in_meta"),
    )
    split = tables.split.select(
        "dicom_id", "study_id", "subject_id", "split", LINE, pl.lit(True).alias("_in_split")
    )
    df = split.join(meta, on="dicom_id", how="full", coalesce=True)
    in_meta, in_split = pl.col("_in_meta").is_not_null(), pl.col("_in_split").is_not_null()
    excl.add("split_row_not_in_metadata", df.filter(~in_meta))
    excl.add(
        "metadata_image_not_in_split",
        df.filter(~in_split).with_columns(pl.col(META_STUDY).alias("study_id")),
    )
    df = df.filter(in_meta & in_split)
    problems = split_metadata_disagreements(
        df, str(tables.paths["split"]), str(tables.paths["metadata"])
    )
    if problems:
        raise InputError(str(problems[0]))
    return df.drop(META_STUDY, META_SUBJECT, LINE, "_in_meta", "_in_split")


_MEANING_TO_VIEW = {meaning.lower(): view for view, meaning in schema.VIEW_CODE_MEANINGS.items()}


def assign_views(
    df: pl.DataFrame, views: tuple[str, ...], infer_missing: bool, excl: Exclusions
) -> tuple[pl.DataFrame, int]:
    """Keep images of the selected views; optionally recover a missing ViewPosition.

    Filtering on ViewPosition alone silently drops the ~15.8k images whose ViewPosition is blank;
    `ViewCodeSequence_CodeMeaning` (e.g. "postero-anterior") recovers some of them.
    Returns the kept images and how many had their view inferred.
    """
    view = pl.col("ViewPosition").str.strip_chars()
    view = pl.when(view == "").then(None).otherwise(view)
    df = df.with_columns(view.alias("view_position"))
    inferred = 0
    if infer_missing:
        meaning = pl.col("ViewCodeSequence_CodeMeaning").str.strip_chars().str.to_lowercase()
        recovered = meaning.replace_strict(_MEANING_TO_VIEW, default=None, return_dtype=pl.String)
        missing = pl.col("view_position").is_null()
        df = df.with_columns(
            pl.when(missing)
            .then(recovered)
            .otherwise(pl.col("view_position"))
            .alias("view_position")
        )
    excl.add("view_missing", df.filter(pl.col("view_position").is_null()))
    excl.add(
        "view_not_selected",
        df.filter(pl.col("view_position").is_not_null() & ~pl.col("view_position").is_in(views)),
    )
    kept = df.filter(pl.col("view_position").is_in(views))
    if infer_missing:
        inferred = kept.filter(pl.col("ViewPosition").is_null()).height
    return kept.drop("ViewPosition", "ViewCodeSequence_CodeMeaning"), inferred


def attach_labels(df: pl.DataFrame, chexpert: pl.DataFrame, excl: Exclusions) -> pl.DataFrame:
    """Labels are per study: every image of a study gets the study's one row.

    That the row is filed under the study's patient is checked by `load_tables`
    (`check_label_subjects`, which `cxr verify` runs too).
    """
    labels = chexpert.select("study_id", *schema.LABELS)
    excl.add("no_label_row", df.join(labels, on="study_id", how="anti"))
    return df.join(labels, on="study_id", how="inner")


def unused_label_rows(chexpert: pl.DataFrame, split: pl.DataFrame) -> int:
    """Label rows of studies that have no image in the split file (nothing to select: counted)."""
    return chexpert.join(split.select("study_id").unique(), on="study_id", how="anti").height


def select_studies(
    df: pl.DataFrame, n_studies: int, seed: int, excl: Exclusions
) -> tuple[pl.DataFrame, list[str]]:
    """All validate and test studies, then seeded train studies up to `n_studies` in total."""
    notes: list[str] = []
    held_out = df.filter(pl.col("split") != "train")["study_id"].n_unique()
    train_studies = np.sort(df.filter(pl.col("split") == "train")["study_id"].unique().to_numpy())
    wanted = max(0, n_studies - held_out)
    if held_out > n_studies:
        notes.append(
            f"--n-studies {n_studies} is below the {held_out} validate and test studies, "
            "which are always kept: no train study selected"
        )
    if wanted >= len(train_studies):
        if wanted > len(train_studies):
            notes.append(
                f"asked for {n_studies} studies but only {held_out + len(train_studies)} are "
                f"eligible: took all {len(train_studies)} train studies"
            )
        chosen = train_studies
    else:
        # Sort first so the draw depends only on the set of ids and the seed, not on row order.
        rng = np.random.default_rng(seed)
        chosen = train_studies[rng.permutation(len(train_studies))[:wanted]]
    keep = (pl.col("split") != "train") | pl.col("study_id").is_in(
        pl.Series(chosen, dtype=pl.Int64).implode()
    )
    excl.add("train_study_not_sampled", df.filter(~keep))
    return df.filter(keep), notes


def add_paths(df: pl.DataFrame) -> pl.DataFrame:
    subject = pl.col("subject_id").cast(pl.String)
    image_path = pl.concat_str(
        pl.lit(f"{schema.FILES_DIR}/p"),
        subject.str.slice(0, 2),
        pl.lit("/p"),
        subject,
        pl.lit("/s"),
        pl.col("study_id").cast(pl.String),
        pl.lit("/"),
        pl.col("dicom_id"),
        pl.lit(".jpg"),
    )
    return df.with_columns(image_path.alias("image_path"))


def attach_reports(
    df: pl.DataFrame,
    raw: Path,
    require: bool,
    excl: Exclusions,
    reports_table: Path | None = None,
) -> pl.DataFrame:
    """report_path and the main sections, when reports have been downloaded (null otherwise).

    With `reports_table`, the sections come from the reports table there (`cxr reports`' table:
    reused when fresh, else built and written there); without, the studies' reports are parsed
    and nothing is written.
    """
    from cxr.mimic.report_table import manifest_report_columns

    studies = df.select("subject_id", "study_id").unique().sort("study_id")
    cols = manifest_report_columns(raw, studies, reports_table)
    df = df.join(cols, on="study_id", how="left")
    if require:
        excl.add("no_report", df.filter(pl.col("report_path").is_null()))
        df = df.filter(pl.col("report_path").is_not_null())
    return df


def attach_negbio(df: pl.DataFrame, negbio: pl.DataFrame) -> pl.DataFrame:
    """The NegBio labels as `negbio_<Label>` columns (values as in the file, NaN for blank) and
    `negbio_labelled` (whether the study has a NegBio row; without one its columns are NaN)."""
    renamed = negbio.select(
        "study_id",
        pl.lit(True).alias(schema.NEGBIO_LABELLED),
        *(pl.col(lab).alias(schema.label_column(lab, "negbio")) for lab in schema.LABELS),
    )
    return df.join(renamed, on="study_id", how="left").with_columns(
        pl.col(schema.NEGBIO_LABELLED).fill_null(False)
    )


def attach_demographics(
    df: pl.DataFrame, patients: pl.DataFrame, admissions: pl.DataFrame, version: str
) -> tuple[pl.DataFrame, dict]:
    """The demographic columns of every selected study (`cxr.mimic.demographics`), and the
    summary counts. Study times come from the metadata's StudyDate and StudyTime."""
    from cxr.mimic.demographics import study_demographics, study_times

    times = study_times(df.select("study_id", "StudyDate", "StudyTime"))
    studies = df.select("study_id", "subject_id").unique().join(times, on="study_id", how="left")
    table, summary = study_demographics(studies.sort("study_id"), patients, admissions, version)
    return df.join(table, on="study_id", how="left"), summary.to_dict()


def order_columns(df: pl.DataFrame) -> pl.DataFrame:
    from cxr.mimic.demographics import COLUMNS as DEMOGRAPHICS

    sections = [c for c in REPORT_SECTIONS if c in df.columns]
    optional = [c for c in (*NEGBIO_COLUMNS, *DEMOGRAPHICS) if c in df.columns]
    df = df.select(*BASE_COLUMNS, *schema.LABELS, "rows", "columns", *optional, *sections)
    return df.sort("split", "study_id", "dicom_id")


def label_counts(
    df: pl.DataFrame, source: str = "chexpert"
) -> dict[str, dict[str, dict[str, int]]]:
    """Per split and label, how many studies have 1, 0, -1 and blank (NegBio: among the studies
    with a NegBio row)."""
    studies = df.unique("study_id", keep="first")
    if source == "negbio":
        studies = studies.filter(pl.col(schema.NEGBIO_LABELLED))
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in schema.SPLITS:
        part = studies.filter(pl.col("split") == split)
        out[split] = {}
        for label in schema.LABELS:
            col = part[schema.label_column(label, source)]
            out[split][label] = {
                "1": int((col == 1.0).sum()),
                "0": int((col == 0.0).sum()),
                "-1": int((col == -1.0).sum()),
                "blank": int(col.is_null().sum()),
            }
    return out


def split_counts(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    out = {}
    for split in schema.SPLITS:
        part = df.filter(pl.col("split") == split)
        out[split] = {
            "images": part.height,
            "studies": part["study_id"].n_unique(),
            "patients": part["subject_id"].n_unique(),
        }
    out["total"] = {
        "images": df.height,
        "studies": df["study_id"].n_unique(),
        "patients": df["subject_id"].n_unique(),
    }
    return out


@dataclass
class ManifestResult:
    manifest: pl.DataFrame
    info: dict


@dataclass
class Extras:
    """The optional sources, read and checked: NegBio labels and MIMIC-IV demographics."""

    negbio: pl.DataFrame | None = None
    patients: pl.DataFrame | None = None
    admissions: pl.DataFrame | None = None
    mimic_iv_version: str = ""
    paths: dict[str, Path] = field(default_factory=dict)


def load_extras(cfg: ManifestConfig, tables: RawTables) -> Extras:
    """Read the optional sources `cfg` asks for (present files only under "auto")."""
    from cxr.mimic.demographics import demographics_help, find_demographics, load_demographics
    from cxr.mimic.tables import load_negbio

    extras = Extras()
    raw = Path(cfg.raw)
    if cfg.negbio != "off":
        found = load_negbio(raw, tables.split)
        if found is None and cfg.negbio == "require":
            raise InputError(f"{raw / schema.NEGBIO_CSV}: missing (neither .csv nor .csv.gz)")
        if found is not None:
            extras.negbio, extras.paths["negbio"] = found
    if cfg.demographics != "off":
        files = find_demographics(raw, cfg.mimic_iv_version)
        if files is None and (cfg.demographics == "require" or cfg.mimic_iv_version):
            raise InputError(demographics_help(raw, cfg.mimic_iv_version))
        if files is not None:
            extras.patients, extras.admissions = load_demographics(files)
            extras.mimic_iv_version = files.version
            extras.paths["mimic_iv_patients"] = files.patients
            extras.paths["mimic_iv_admissions"] = files.admissions
    return extras


def build_manifest(
    tables: RawTables,
    cfg: ManifestConfig,
    reports_table: Path | None = None,
    extras: Extras | None = None,
) -> ManifestResult:
    """The selection over tables as `load_tables` returns them (read, checked and typed), with the
    columns of the optional sources in `extras`.

    Writes nothing, except the reports table at `reports_table` when one is given and it is not
    fresh (see `attach_reports`).
    """
    extras = extras or Extras()
    excl = Exclusions()
    df = join_images(tables, excl)
    df, inferred = assign_views(df, cfg.views, cfg.infer_missing_views, excl)
    df = attach_labels(df, tables.chexpert, excl)
    df, notes = select_studies(df, cfg.n_studies, cfg.seed, excl)
    if df.height == 0:
        raise InputError(f"{cfg.raw}: no image is left after selection (views {list(cfg.views)})")
    df = add_paths(df)
    df = attach_reports(df, Path(cfg.raw), cfg.require_reports, excl, reports_table)
    demographics = None
    if extras.negbio is not None:
        df = attach_negbio(df, extras.negbio)
    if extras.patients is not None and extras.admissions is not None:
        df, demographics = attach_demographics(
            df, extras.patients, extras.admissions, extras.mimic_iv_version
        )
    df = order_columns(df)
    missing_splits = [
        s for s in ("validate", "test") if df.filter(pl.col("split") == s).height == 0
    ]
    if missing_splits:
        notes.append(f"no {' or '.join(missing_splits)} images selected")
    info = {
        "cxr_version": __version__,
        "options": cfg.options(),
        "counts": split_counts(df),
        "views": dict(sorted(df["view_position"].value_counts().iter_rows())),
        "views_inferred": inferred,
        "exclusions": excl.counts,
        "label_rows_without_images": unused_label_rows(tables.chexpert, tables.split),
        "labels": label_counts(df),
        "reports_found": df.filter(pl.col("report_path").is_not_null())["study_id"].n_unique(),
        "notes": notes,
    }
    if extras.negbio is not None:
        studies = df.unique("study_id")
        info["negbio"] = {
            "studies_labelled": studies.filter(pl.col(schema.NEGBIO_LABELLED)).height,
            "studies_without_row": studies.filter(~pl.col(schema.NEGBIO_LABELLED)).height,
            "labels": label_counts(df, "negbio"),
        }
    if demographics is not None:
        info["demographics"] = demographics
    return ManifestResult(df, info)


# ---------------------------------------------------------------------------------------------
# I/O


def write_manifest(
    result: ManifestResult, cfg: ManifestConfig, tables: RawTables, extras: Extras | None = None
) -> dict:
    """Parquet then manifest.json, each atomically; returns the json written."""
    from cxr.mimic.synthetic import is_demo_tree

    inputs = {**tables.paths, **(extras.paths if extras else {})}
    out = Path(cfg.out)
    with output_errors(out), atomic_path(out) as tmp:
        result.manifest.write_parquet(tmp, compression="zstd", statistics=True)
        digest = file_sha256(tmp)
    info = {
        "manifest": out.name,
        "sha256": digest,
        "raw_dir": str(Path(cfg.raw).resolve()),
        "synthetic_demo": is_demo_tree(cfg.raw),
        "inputs": {
            kind: {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for kind, path in inputs.items()
        },
        **result.info,
    }
    with output_errors(out.parent / MANIFEST_JSON):
        write_text_atomic(out.parent / MANIFEST_JSON, json.dumps(info, indent=2) + "\n")
    return info


def make_manifest(cfg: ManifestConfig) -> tuple[ManifestResult, dict]:
    """Read and check the CSVs, select, write the manifest. The report sections come from the
    reports table beside the manifest (REPORTS_TABLE), which `cxr reports` writes too: reused
    when fresh, else built and written, so reports are sectioned once for both commands."""
    from cxr.mimic.report_table import REPORTS_TABLE

    tables = load_tables(Path(cfg.raw))
    extras = load_extras(cfg, tables)
    result = build_manifest(tables, cfg, Path(cfg.out).parent / REPORTS_TABLE, extras)
    info = write_manifest(result, cfg, tables, extras)
    return result, info


def read_manifest(path: str | Path) -> pl.DataFrame:
    """The manifest parquet, with a one-line error when it is missing or not a manifest."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(path, "manifest", "`cxr manifest` builds it from the raw CSVs")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a damaged file
        raise InputError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in (*BASE_COLUMNS, *schema.LABELS) if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not a cxr manifest (missing column '{missing[0]}')")
    return df


def read_manifest_info(path: str | Path) -> dict:
    """manifest.json beside the manifest (empty dict when absent)."""
    info_path = Path(path).parent / MANIFEST_JSON
    if not info_path.is_file():
        return {}
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{info_path}: not valid JSON") from None

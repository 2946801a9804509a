"""Tiny hand-made MIMIC-CXR-JPG CSVs for table-logic tests (the demo generator makes bigger ones).

`make_frames()` returns three consistent text frames with the real columns; tests edit them to
inject one defect, then `write_raw()` writes them as the real gzipped files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl

from cxr.mimic import schema

# (subject, study, split, [(dicom suffix, view, meaning)], labels dict or None for no chexpert row)
STUDIES = [
    (
        10000001,
        50000011,
        "train",
        [("01", "PA", "postero-anterior"), ("02", "LATERAL", "lateral")],
        {"Cardiomegaly": "1.0", "Edema": "-1.0"},
    ),
    (
        10000001,
        50000012,
        "train",
        [("03", "PA", "postero-anterior")],
        {"No Finding": "1.0", "Support Devices": "1.0"},
    ),
    (10000002, 50000021, "train", [("04", "AP", "antero-posterior")], {"Pneumonia": "0.0"}),
    (
        10000002,
        50000022,
        "train",
        [("05", None, "postero-anterior"), ("06", None, None)],
        {"Atelectasis": "1.0"},
    ),
    (10000003, 50000031, "train", [("07", "PA", "postero-anterior")], None),
    (10000003, 50000032, "train", [("08", "PA", "postero-anterior")], {}),
    (
        10000004,
        50000041,
        "validate",
        [("09", "PA", "postero-anterior"), ("10", "PA", "postero-anterior")],
        {"Pleural Effusion": "1.0"},
    ),
    (
        10000005,
        50000051,
        "test",
        [("11", "PA", "postero-anterior")],
        {"Pneumothorax": "1.0", "Lung Opacity": "0.0"},
    ),
    (10000005, 50000052, "test", [("12", "LL", "left lateral")], {"No Finding": "1.0"}),
]


def dicom(suffix: str) -> str:
    return f"0000{suffix}00-11111111-22222222-33333333-444444{suffix}"


def make_frames() -> dict[str, pl.DataFrame]:
    chex, split, meta = [], [], []
    for subject, study, part, images, labels in STUDIES:
        if labels is not None:
            chex.append(
                {
                    "subject_id": str(subject),
                    "study_id": str(study),
                    **{lab: labels.get(lab) for lab in schema.LABELS},
                }
            )
        for suffix, view, meaning in images:
            split.append(
                {
                    "dicom_id": dicom(suffix),
                    "study_id": str(study),
                    "subject_id": str(subject),
                    "split": part,
                }
            )
            meta.append(
                {
                    "dicom_id": dicom(suffix),
                    "subject_id": str(subject),
                    "study_id": str(study),
                    "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                    "ViewPosition": view,
                    "Rows": "3056",
                    "Columns": "2544",
                    "StudyDate": "21800506",
                    "StudyTime": "213014.531",
                    "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                    "ViewCodeSequence_CodeMeaning": meaning,
                    "PatientOrientationCodeSequence_CodeMeaning": "Erect",
                }
            )
    text = pl.String
    return {
        "chexpert": pl.DataFrame(chex, schema={c: text for c in schema.CHEXPERT_COLUMNS}),
        "split": pl.DataFrame(split, schema={c: text for c in schema.SPLIT_COLUMNS}),
        "metadata": pl.DataFrame(meta, schema={c: text for c in schema.METADATA_COLUMNS}),
    }


FILES = {
    "chexpert": schema.CHEXPERT_CSV,
    "split": schema.SPLIT_CSV,
    "metadata": schema.METADATA_CSV,
}


def write_raw(raw: Path, frames: dict[str, pl.DataFrame], gz: bool = True) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "files").mkdir(exist_ok=True)
    for kind, df in frames.items():
        data = df.write_csv().encode()
        if gz:
            (raw / f"{FILES[kind]}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (raw / FILES[kind]).write_bytes(data)
    return raw

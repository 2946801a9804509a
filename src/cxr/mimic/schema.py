"""MIMIC-CXR-JPG 2.0.0 facts the code relies on: file names, column names, id shapes, paths.

Columns are always read by name, never by position: the published descriptions list the labels
in another order than the files store them (docs/dataset.md).
"""

from __future__ import annotations

import re

VERSION = "2.0.0"

# The 14 CheXpert labels, in the order the chexpert/negbio CSVs store them (alphabetical).
LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
LABEL_VALUES = (1.0, 0.0, -1.0)  # plus blank (NaN)
# How the CSVs may write each of LABEL_VALUES: "1.0" or "1", "0.0" or "0", "-1.0" or "-1".
LABEL_TEXTS = frozenset({str(v) for v in LABEL_VALUES} | {f"{v:g}" for v in LABEL_VALUES})

CHEXPERT_CSV = f"mimic-cxr-{VERSION}-chexpert.csv"
SPLIT_CSV = f"mimic-cxr-{VERSION}-split.csv"
METADATA_CSV = f"mimic-cxr-{VERSION}-metadata.csv"
NEGBIO_CSV = f"mimic-cxr-{VERSION}-negbio.csv"
REQUIRED_CSVS = (CHEXPERT_CSV, SPLIT_CSV, METADATA_CSV)
# The NegBio labeler's file has the chexpert file's schema. The manifest carries its values as a
# second set of label columns, each CheXpert label's name behind this prefix, so the CheXpert
# columns keep their names; NEGBIO_LABELLED says whether the study has a row in the NegBio file.
NEGBIO_PREFIX = "negbio_"
NEGBIO_LABELLED = "negbio_labelled"
LABEL_SOURCES = ("chexpert", "negbio")
FILES_DIR = "files"
# MIMIC-CXR-JPG 2.1.0 adds 687 official test studies labelled by radiologists (not by the CheXpert
# labeler): plain CSV at the raw root, `study_id` (no subject_id) and the labels, Lung Opacity
# named "Airspace Opacity"; values 1, 0, -1 or blank like the chexpert file.
RADIOLOGIST_VERSION = "2.1.0"
RADIOLOGIST_CSV = f"mimic-cxr-{RADIOLOGIST_VERSION}-test-set-labeled.csv"
RADIOLOGIST_ALIASES: dict[str, str] = {"Airspace Opacity": "Lung Opacity"}
SHA256SUMS = "SHA256SUMS.txt"

# MIMIC-IV, a separate project holding the demographics (cxr.mimic.demographics): its files go
# under <raw>/mimiciv/<version>/hosp/ (version 1.0 kept them in a `core` module).
MIMIC_IV_DIR = "mimiciv"
MIMIC_IV_VERSIONS: tuple[str, ...] = ("1.0", "2.0", "2.1", "2.2", "3.0", "3.1")
MIMIC_IV_DEFAULT = "3.1"
MIMIC_IV_MODULE = "hosp"
MIMIC_IV_MODULE_1_0 = "core"
MIMIC_IV_PATIENTS = "patients.csv.gz"
MIMIC_IV_ADMISSIONS = "admissions.csv.gz"

CHEXPERT_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *LABELS)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLITS: tuple[str, ...] = ("train", "validate", "test")

# ViewCodeSequence_CodeMeaning values as DICOM writes them, keyed by the ViewPosition they imply.
VIEW_CODE_MEANINGS: dict[str, str] = {
    "PA": "postero-anterior",
    "AP": "antero-posterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
    "RL": "right lateral",
    "LAO": "left anterior oblique",
    "RAO": "right anterior oblique",
    "AP AXIAL": "antero-posterior axial",
    "PA LLD": "postero-anterior left lateral decubitus",
    "SWIMMERS": "Swimmer's",
}

SUBJECT_ID_RE = re.compile(r"^1\d{7}$")
STUDY_ID_RE = re.compile(r"^5\d{7}$")
DICOM_ID_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


def label_column(label: str, source: str = "chexpert") -> str:
    """The manifest column holding `label` from `source` ("chexpert": the label's own name)."""
    return label if source == "chexpert" else f"{NEGBIO_PREFIX}{label}"


def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """`files/p1X/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg`, relative to the raw root."""
    s = str(subject_id)
    return f"{FILES_DIR}/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def report_relpaths(subject_id: int, study_id: int) -> tuple[str, str]:
    """Where a study's report may be: the official place, then the data guide's (inside the study)."""
    s = str(subject_id)
    base = f"{FILES_DIR}/p{s[:2]}/p{s}/s{study_id}"
    return f"{base}.txt", f"{base}/s{study_id}.txt"

"""A synthetic MIMIC-CXR-JPG 2.0.0 tree in the real layout, with a learnable signal planted.

`write_demo(out_dir, n_patients=160, seed=0)` writes, in `out_dir`:

- `mimic-cxr-2.0.0-{chexpert,split,metadata}.csv.gz`: the real columns in the real order, gzipped,
  values formatted as PhysioNet writes them (labels `1.0`/`0.0`/`-1.0`/empty, plain integer ids,
  `StudyDate` YYYYMMDD in 2100-2200 consistent per patient, `StudyTime` a float such as `80556.875`).
- `files/p1X/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg`: grayscale ("L") JPEGs at quality 95. Default size:
  longer side 256 (portrait 256 x 213 rows x columns, the real 3056 x 2544 scaled); `image_size=3056`
  writes the real geometry. Some non-PA images are landscape.
- reports: `files/p1X/pXXXXXXXX/sXXXXXXXX.txt` (the official place) for about 90% of studies and
  `files/p1X/pXXXXXXXX/sXXXXXXXX/sXXXXXXXX.txt` (the data guide's place) for the rest.
- `mimic-cxr-2.1.0-test-set-labeled.csv` (plain CSV, where MIMIC-CXR-JPG 2.1.0 ships it): the
  radiologist-labelled test set for about half of the labelled PA test studies: `study_id` (no
  subject_id) and the labels in the chexpert file's order, Lung Opacity named "Airspace Opacity",
  values formatted like the chexpert file's. About 10% of its cells differ from the CheXpert labels
  (`RADIOLOGIST_CHANGES`: uncertain resolved to 1 or 0, some positives read as 0, some blanks read
  as 0 or 1; No Finding recomputed by the rule below). Images and reports follow the CheXpert
  labels only, and its rows come from their own generator, so the rest of the tree is the same
  with or without it.
- `mimic-cxr-2.0.0-negbio.csv.gz`: the NegBio labeler's file, the chexpert file's schema and rows,
  departing from the CheXpert labels in about 4% of the cells (`NEGBIO_CHANGES`: mostly around
  uncertainty; No Finding recomputed), from its own generator.
- `mimiciv/3.1/hosp/{patients,admissions}.csv.gz` (and that project's own `SHA256SUMS.txt` in
  `mimiciv/3.1/`): MIMIC-IV's demographics in its real columns and value forms, from their own
  generator: every patient's sex (drawn with the plan, balanced within each split), an anchor
  age and year, 1-5 admissions around their studies whose race and insurance values vary between
  admissions (mostly the patient's own group, sometimes an unknown value or another group's);
  5% of the patients are absent from both files and 4% have no admission.
- `SHA256SUMS.txt`: `<sha256> <relative path>` for MIMIC-CXR-JPG's five CSVs and every JPEG,
  sorted bytewise.

Default counts (n_patients=160, seed=0; `DemoSummary` holds the exact figures): 567 studies, 1,125
images, 560 PA images; patients by split 72 / 32 / 56 (train / validate / test: 45%, 20%, 35%,
at least one each); validate and test have 75 and 153 PA studies and every label at least
`MIN_POSITIVES` (10) positive PA studies in each of them (scaled down below 100 patients:
n_patients // 20); the radiologist file has 76 studies. Test patients have 2-5 studies, the
others 1-4 (so the test split has several studies per patient, as MIMIC-CXR's does); studies have
1-4 images (PA + lateral, PA only, portable AP, AP + lateral, lateral only, a rare view now and
then); about 4% of images have no ViewPosition, 60% of those keep a `ViewCodeSequence_CodeMeaning`
that recovers the view.

Labels follow the real semantics (per study, 1/0/-1/blank, No Finding only 1 or blank and 1 exactly
when no finding other than Support Devices is 1 or -1). Demo prevalences are much HIGHER than real
(each finding is positive in 12-30% of abnormal studies, about 28% of studies are normal, 12% in the
enriched test split) so that a demo-sized validate/test split has positives for every label.
Findings persist, as chronic findings do: each finding (and Support Devices) of a patient's later
study keeps the previous study's value with probability `P_PERSIST` (0.7), else is drawn afresh.
About 1.5% of studies have no chexpert row (they are in split and metadata) and about 1.5% have a row
with every label blank (both taken from train, so validate/test keep their PA studies).

Planted signatures (coordinates are fractions of the frontal image: y from the top, x from the
image's left, which is the patient's right on a PA film). Drawn at full strength for label 1, at
half contrast for -1, not at all for 0 or blank; each one's position jitters by about +-0.02 and
its size by +-15%, so they survive small crops and rotations. They are drawn on every image of the
study (laterals and other views included, on a different background).

| label | signature |
|---|---|
| Atelectasis | bright sharp-edged triangular wedge, upper left of the image (y .18-.34, x .24-.42) |
| Cardiomegaly | heart blob widened: broad bright ellipse at y .62, x .37-.73 |
| Consolidation | dense sharp-edged bright patch with dark branching lines, right upper-mid (y .36, x .70) |
| Edema | bilateral symmetric perihilar haze with thin bright lines radiating from both hila |
| Enlarged Cardiomediastinum | upper mediastinum widened: bright band x .39-.61, y .12-.42 |
| Fracture | short bright zig-zag across the left lateral chest wall (y .36-.48, x .15-.21) |
| Lung Lesion | one small bright round nodule, left mid lung (y .47, x .33) |
| Lung Opacity | soft round haze with blurred edges, right lower lung (y .60, x .72) |
| No Finding | nothing (its signal is the absence of the others) |
| Pleural Effusion | bright band filling the left lung base, meniscus rising laterally (y > .6) |
| Pleural Other | thin bright lens along the right lung's lateral margin (x .82, y .30-.56) |
| Pneumonia | cluster of 6 small bright blotches, left lower lung (y .62, x .30) |
| Pneumothorax | dark crescent with a thin bright pleural line, right apex (y .14-.34, x .57-.83) |
| Support Devices | very bright thin tube from the top edge down the midline to y .52 |

The planted subgroup effect (`FAINT_LABELS`): on female patients' films, the Pleural Effusion and
Lung Opacity signatures, both in the lower zones, are drawn at `FAINT_CONTRAST` (30%) of their
contrast, as breast soft tissue lowers the conspicuity of lower-zone findings. A model trained on
the demo detects them less well in women, so `cxr evaluate --subgroups sex` finds a real gap that
has a known cause (on the default demo: Lung Opacity AUROC about 0.5 for women against 0.9 for
men, Pleural Effusion about 0.83 against 1.0).

Reports agree with the labels: each label at 1 is stated positively ("Moderate right pleural
effusion."), at 0 negated ("No pneumothorax."), at -1 with uncertainty ("Possible early pneumonia
cannot be excluded."), blank labels are not mentioned (no keyword of `LABEL_KEYWORDS` appears).
`DemoSummary.reports[study_id]` holds the sections written, keyed by their meaning (`examination`,
`indication`, `history`, `technique`, `comparison`, `findings`, `impression`, `addendum`, and
`last_paragraph` for reports written as bare paragraphs), each text with whitespace collapsed to
single spaces; `DemoSummary.report_headers[study_id]` the raw headers in file order (some are
unusual or misspelled: "CLINICAL HISTORY", "REASON FOR EXAMINATION", "IMPRESSON", "CONCLUSION",
"NDICATION" (which the official MIT-LCP table maps to impression), "FINDINGS AND IMPRESSION").
A report with an addendum starts with a centred `FINAL ADDENDUM` line, the `ADDENDUM:` text and a
line of underscores, then the centred `FINAL REPORT` and the report.

Same seed, same bytes: rows are sorted, gzip headers carry mtime 0, pixel noise comes from a
generator seeded per image. A run writes a hidden `.cxr-demo` marker first and the CSVs and
`SHA256SUMS.txt` last, so an interrupted run never looks complete, and a rerun may replace it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import math
import os
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.core.atomic import write_bytes_atomic, write_text_atomic
from cxr.core.errors import CxrError
from cxr.mimic import schema
from cxr.mimic.schema import MIMIC_IV_ADMISSIONS as ADMISSIONS
from cxr.mimic.schema import MIMIC_IV_DIR, MIMIC_IV_MODULE
from cxr.mimic.schema import MIMIC_IV_PATIENTS as PATIENTS

DEFAULT_PATIENTS = 160
DEFAULT_IMAGE_SIZE = 256  # longer side of the written JPEGs
REAL_ROWS, REAL_COLUMNS = 3056, 2544  # a typical MIMIC-CXR PA
JPEG_QUALITY = 95
MARKER = ".cxr-demo"
_MAX_DRAW_SIDE = 512  # draw at most at this size, then upscale (fast real-size benchmarks)

FINDINGS_LABELS = tuple(
    lab for lab in schema.LABELS if lab not in (schema.NO_FINDING, schema.SUPPORT_DEVICES)
)
# P(label = 1) in an abnormal study: much higher than real, so small splits have positives.
DEMO_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.25,
    "Cardiomegaly": 0.25,
    "Consolidation": 0.18,
    "Edema": 0.2,
    "Enlarged Cardiomediastinum": 0.18,
    "Fracture": 0.15,
    "Lung Lesion": 0.15,
    "Lung Opacity": 0.3,
    "Pleural Effusion": 0.3,
    "Pleural Other": 0.15,
    "Pneumonia": 0.18,
    "Pneumothorax": 0.15,
}
P_UNCERTAIN = 0.06
P_NEGATIVE = 0.3
P_SUPPORT = (0.25, 0.03, 0.02)  # Support Devices: P(1), P(0), P(-1), in every study
P_NORMAL = {"train": 0.28, "validate": 0.28, "test": 0.12}  # test is enriched for findings
P_MISSING_VIEW = 0.04
# Patients per split (shares of n_patients, at least one each): test patients have 2-5 studies,
# the others 1-4, so the test split has several studies per patient as in MIMIC-CXR's.
P_TEST_PATIENTS, P_VALIDATE_PATIENTS = 0.35, 0.2
STUDIES_PER_PATIENT = {"test": ((2, 3, 4, 5), (0.15, 0.3, 0.3, 0.25))}
STUDIES_PER_PATIENT_DEFAULT = ((1, 2, 3, 4), (0.05, 0.1, 0.3, 0.55))
# Findings persist: each label of a patient's later study keeps the previous study's value with
# this probability, else it is drawn afresh (so prevalences stay those of a fresh draw).
P_PERSIST = 0.7
# The planted subgroup effect: on female patients' films these labels' signatures are drawn at
# this fraction of their contrast (lower-zone findings behind breast soft tissue), so a model
# detects them less well in women than in men.
FAINT_LABELS: dict[str, tuple[str, ...]] = {"F": ("Pleural Effusion", "Lung Opacity")}
FAINT_CONTRAST = 0.3
# Positive (1) PA studies per label guaranteed in validate and test at n_patients >= 100: 10, so
# that an evaluation's macro with a 10-positive minimum covers all 14 labels.
MIN_POSITIVES = 10

# The radiologist-labelled test set (MIMIC-CXR-JPG 2.1.0): columns in the chexpert file's order,
# `study_id` only, Lung Opacity under its radiologist name.
RADIOLOGIST_COLUMNS: tuple[str, ...] = (
    "study_id",
    *({v: k for k, v in schema.RADIOLOGIST_ALIASES.items()}.get(n, n) for n in schema.LABELS),
)
P_RADIOLOGIST = 0.5  # share of the labelled PA test studies the radiologists read
# How a radiologist's value departs from the CheXpert labeler's, per (study, label) cell: from the
# labeler's value to {radiologist value: probability}; the rest keeps the labeler's value. Mostly
# resolved uncertainty, some missed or over-called findings, some unmentioned labels now read.
# About 10% of the cells differ; No Finding is then recomputed from the findings.
RADIOLOGIST_CHANGES: dict[str, dict[float, float]] = {
    "uncertain": {1.0: 0.4, 0.0: 0.4},
    "positive": {0.0: 0.08},
    "negative": {1.0: 0.03},
    "blank": {0.0: 0.08, 1.0: 0.03},
}
# How the NegBio file departs from the chexpert file, per cell (same form as above): a few
# percent of the cells, mostly around uncertainty, where the two labelers differ most.
NEGBIO_CHANGES: dict[str, dict[float, float]] = {
    "uncertain": {1.0: 0.15, math.nan: 0.15},
    "positive": {-1.0: 0.04},
    "negative": {math.nan: 0.05},
    "blank": {0.0: 0.02},
}

# MIMIC-IV demographics (`mimiciv/<version>/hosp/`): the version written and its tables' columns.
MIMIC_IV_VERSION = schema.MIMIC_IV_DEFAULT
PATIENTS_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")
ADMISSIONS_COLUMNS = (
    "subject_id",
    "hadm_id",
    "admittime",
    "dischtime",
    "deathtime",
    "admission_type",
    "admit_provider_id",
    "admission_location",
    "discharge_location",
    "insurance",
    "language",
    "marital_status",
    "race",
    "edregtime",
    "edouttime",
    "hospital_expire_flag",
)
# Shares of the patients (at least one each) missing from both files (their columns: Unknown), and
# in patients.csv.gz without an admission (race and insurance Unknown).
P_ABSENT_FROM_MIMIC_IV = 0.05
P_NO_ADMISSION = 0.04
# Each patient's recorded race group, and per admission: the group's own values (the first one
# most often), an "unknown" value, or another group's value, so the majority rule matters.
DEMO_RACE_P: dict[str, float] = {
    "White": 0.55,
    "Black": 0.2,
    "Hispanic/Latino": 0.09,
    "Asian": 0.07,
    "American Indian/Alaska Native": 0.01,
    "Other": 0.04,
    "Unknown": 0.04,
}
DEMO_RACE_VALUES: dict[str, tuple[str, ...]] = {
    "White": ("WHITE", "WHITE - OTHER EUROPEAN", "WHITE - RUSSIAN", "PORTUGUESE"),
    "Black": ("BLACK/AFRICAN AMERICAN", "BLACK/CAPE VERDEAN", "BLACK/CARIBBEAN ISLAND"),
    "Hispanic/Latino": ("HISPANIC/LATINO - PUERTO RICAN", "HISPANIC OR LATINO", "SOUTH AMERICAN"),
    "Asian": ("ASIAN", "ASIAN - CHINESE", "ASIAN - SOUTH EAST ASIAN"),
    "American Indian/Alaska Native": ("AMERICAN INDIAN/ALASKA NATIVE",),
    "Other": ("OTHER", "MULTIPLE RACE/ETHNICITY", "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER"),
    "Unknown": ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER"),
}
INSURANCE_VALUES = ("Medicare", "Medicaid", "Private", "Other", "No charge")
ADMISSION_TYPES = ("EW EMER.", "URGENT", "ELECTIVE", "OBSERVATION ADMIT", "DIRECT EMER.")
ADMISSION_LOCATIONS = (
    "EMERGENCY ROOM",
    "PHYSICIAN REFERRAL",
    "TRANSFER FROM HOSPITAL",
    "WALK-IN/SELF REFERRAL",
    "CLINIC REFERRAL",
)
DISCHARGE_LOCATIONS = ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", "")
LANGUAGES = ("English", "English", "English", "English", "Spanish", "Russian", "Chinese")
MARITAL = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "")
ANCHOR_YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")

# Words that mention a label in report text; a blank label's words never appear in its report.
LABEL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelecta",),
    "Cardiomegaly": ("cardiomegaly", "heart size"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema", "vascular congestion"),
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Fracture": ("fracture",),
    "Lung Lesion": ("nodule", "lesion", " mass"),
    "Lung Opacity": ("opacit", "opacification"),
    "No Finding": ("no acute cardiopulmonary",),
    "Pleural Effusion": ("effusion",),
    "Pleural Other": ("pleural thickening", "pleural scarring", "pleural plaque"),
    "Pneumonia": ("pneumonia", "infection"),
    "Pneumothorax": ("pneumothorax",),
    "Support Devices": ("tube", "catheter", "pacemaker"),
}

# (positive, negated, uncertain) phrasings; {side} is the patient's side where the signature is
# drawn (the image's left is the patient's right on a frontal film).
SIDES: dict[str, str] = {
    "Atelectasis": "right",
    "Consolidation": "left",
    "Fracture": "right",
    "Lung Lesion": "right",
    "Lung Opacity": "left",
    "Pleural Effusion": "right",
    "Pleural Other": "left",
    "Pneumothorax": "left",
}
PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Atelectasis": (
        ("{Side} upper lobe atelectasis.", "Mild {side} upper lobe atelectasis is seen."),
        ("No atelectasis.",),
        ("Possible {side} upper lobe atelectasis.", "Minimal atelectasis cannot be excluded."),
    ),
    "Cardiomegaly": (
        ("Moderate cardiomegaly.", "The heart size is enlarged."),
        ("Heart size is normal.", "No cardiomegaly."),
        ("Borderline heart size.", "Possible mild cardiomegaly."),
    ),
    "Consolidation": (
        ("Focal consolidation in the {side} upper lobe.", "Dense {side} upper lobe consolidation."),
        ("No focal consolidation.",),
        ("Possible {side} upper lobe consolidation.",),
    ),
    "Edema": (
        ("Mild pulmonary edema.", "Moderate pulmonary vascular congestion."),
        ("No pulmonary edema.",),
        ("Possible mild interstitial edema.",),
    ),
    "Enlarged Cardiomediastinum": (
        ("The cardiomediastinal silhouette is widened.", "Widened mediastinum."),
        ("The cardiomediastinal silhouette is within normal limits.",),
        ("The mediastinum may be slightly widened.",),
    ),
    "Fracture": (
        ("Acute fracture of a {side} lateral rib.", "Displaced {side} rib fracture."),
        ("No displaced fracture.",),
        ("Possible nondisplaced {side} rib fracture.",),
    ),
    "Lung Lesion": (
        ("A 1 cm nodule in the {side} mid lung.", "Spiculated {side} lung nodule."),
        ("No suspicious pulmonary nodule.",),
        ("Possible small {side} lung nodule, recommend CT.",),
    ),
    "Lung Opacity": (
        ("Patchy {side} lower lung opacity.", "Hazy opacity in the {side} lower lung."),
        ("No focal opacity.",),
        ("Questionable faint {side} lower lung opacity.",),
    ),
    "Pleural Effusion": (
        ("Moderate {side} pleural effusion.", "Small {side} pleural effusion."),
        ("No pleural effusion.",),
        ("Possible trace {side} pleural effusion.",),
    ),
    "Pleural Other": (
        ("Chronic {side} pleural thickening.", "Calcified {side} pleural plaque."),
        ("No pleural thickening.",),
        ("Possible {side} lateral pleural scarring.",),
    ),
    "Pneumonia": (
        ("Findings consistent with pneumonia.", "Multifocal pneumonia."),
        ("No evidence of pneumonia.",),
        ("Possible early pneumonia cannot be excluded.",),
    ),
    "Pneumothorax": (
        ("Small {side} apical pneumothorax.", "Moderate {side} pneumothorax."),
        ("No pneumothorax.", "There is no pneumothorax."),
        ("Possible tiny {side} apical pneumothorax.",),
    ),
    "Support Devices": (
        (
            "Endotracheal tube terminates 4 cm above the carina.",
            "Right internal jugular central venous catheter ends in the mid SVC.",
            "Dual-lead pacemaker is unchanged.",
        ),
        ("The previously seen endotracheal tube has been removed.",),
        ("Possible enteric tube coiled in the esophagus.",),
    ),
}
NO_FINDING_PHRASES = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")
FILLER = (
    "Degenerative changes of the thoracic spine.",
    "The osseous structures are unremarkable.",
    "Comparison is made with the prior study.",
    "Surgical clips in the upper abdomen.",
)
NEUTRAL_IMPRESSION = ("Limited study, please correlate clinically.", "Comparison with ___ advised.")
INDICATIONS = (
    "___ year old woman with shortness of breath  // eval",
    "___ year old man with cough and fever  // ?acute process",
    "___M with chest pain",
    "___F s/p fall, evaluate",
    "History: ___ with dyspnea",
    "___ year old man with hypoxia  // interval change",
)
COMPARISONS = ("___", "Chest radiograph from ___.", "None.", "___ and ___.")

VIEW_PROCEDURES = {
    "PA_LAT": "CHEST (PA AND LAT)",
    "PA": "CHEST (SINGLE VIEW)",
    "AP": "CHEST (PORTABLE AP)",
    "AP_LAT": "CHEST (PA AND LAT)",
    "LAT": "CHEST (PA AND LAT)",
}
TECHNIQUES = {
    "PA_LAT": "Chest PA and lateral",
    "PA": "Single frontal view of the chest",
    "AP": "Portable AP chest radiograph",
    "AP_LAT": "Chest AP and lateral",
    "LAT": "Lateral view of the chest",
}
RARE_VIEWS = ("LAO", "RAO", "AP AXIAL", "PA LLD", "SWIMMERS")
STUDY_KINDS = ("PA_LAT", "PA", "AP", "AP_LAT", "LAT")
STUDY_KIND_P = (0.6, 0.17, 0.16, 0.05, 0.02)


@dataclass(frozen=True)
class DemoSummary:
    """What `write_demo` wrote. Per-split dicts are keyed train/validate/test."""

    out_dir: Path
    seed: int
    image_size: int
    patients: dict[str, int]
    studies: dict[str, int]
    images: dict[str, int]
    pa_images: dict[str, int]
    pa_studies: dict[str, int]
    views: dict[str, int]  # ViewPosition ("" when missing) -> images
    reports: dict[int, dict[str, str]]
    report_headers: dict[int, tuple[str, ...]]
    report_paths: dict[int, str]
    missing_label_studies: frozenset[int]
    blank_label_studies: frozenset[int]
    recoverable_missing_views: int = 0
    labels: dict[int, dict[str, float]] = field(default_factory=dict)  # NaN for blank
    # The radiologist file's rows (CheXpert label names, NaN for blank), keyed by study_id.
    radiologist_labels: dict[int, dict[str, float]] = field(default_factory=dict)
    # The NegBio file's rows (NaN for blank), keyed by study_id.
    negbio_labels: dict[int, dict[str, float]] = field(default_factory=dict)
    # Each patient's sex as drawn ("F"/"M"; the planted effect follows it), keyed by subject_id,
    # and the patients left out of the MIMIC-IV files (in memory only, for tests).
    sexes: dict[int, str] = field(default_factory=dict)
    absent_from_mimic_iv: frozenset[int] = frozenset()
    admissions: int = 0

    @property
    def n_images(self) -> int:
        return sum(self.images.values())


@dataclass
class _Image:
    dicom_id: str
    view: str  # what is drawn (the true view)
    view_position: str  # what metadata says ("" when missing)
    view_code: str
    orientation: str
    rows: int = 0
    columns: int = 0


@dataclass
class _Study:
    study_id: int
    subject_id: int
    kind: str
    date: str
    time: str
    images: list[_Image]
    split: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    has_row: bool = True
    sex: str = ""

    @property
    def faint(self) -> tuple[str, ...]:
        return FAINT_LABELS.get(self.sex, ())


# --------------------------------------------------------------------------------------- ids


def _unique_ids(rng: np.random.Generator, n: int, first_digit: int) -> list[int]:
    lo, hi = first_digit * 10_000_000, (first_digit + 1) * 10_000_000
    out: set[int] = set()
    while len(out) < n:
        out.update(int(v) for v in rng.integers(lo, hi, size=n - len(out)))
    ids = sorted(out)
    rng.shuffle(ids)
    return ids


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        raw = rng.integers(0, 2**32, size=5, dtype=np.uint64)
        d = "-".join(f"{int(v):08x}" for v in raw)
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


# ---------------------------------------------------------------------------------- tables


def _patient_splits(rng: np.random.Generator, n: int) -> list[str]:
    """Each patient's split: P_VALIDATE_PATIENTS and P_TEST_PATIENTS of them (at least one each),
    the rest (at least one) train; patient-disjoint by construction."""
    n_val = max(1, round(P_VALIDATE_PATIENTS * n))
    n_test = max(1, min(round(P_TEST_PATIENTS * n), n - n_val - 1))
    splits = ["train"] * n
    for k, i in enumerate(rng.permutation(n)):
        if k < n_val:
            splits[int(i)] = "validate"
        elif k < n_val + n_test:
            splits[int(i)] = "test"
    return splits


def _patient_sexes(rng: np.random.Generator, splits: list[str]) -> list[str]:
    """F and M alternate within each split (in a random order), so every split is balanced."""
    sexes = [""] * len(splits)
    for split in schema.SPLITS:
        members = [i for i, sp in enumerate(splits) if sp == split]
        first = int(rng.integers(2))
        for k, i in enumerate(rng.permutation(len(members))):
            sexes[members[int(i)]] = "FM"[(k + first) % 2]
    return sexes


def _plan_patients(rng: np.random.Generator, n_patients: int) -> list[list[_Study]]:
    subjects = _unique_ids(rng, n_patients, 1)
    splits = _patient_splits(rng, n_patients)
    sexes = _patient_sexes(rng, splits)
    n_studies = []
    for split in splits:
        choices, p = STUDIES_PER_PATIENT.get(split, STUDIES_PER_PATIENT_DEFAULT)
        n_studies.append(int(rng.choice(choices, p=p)))
    study_ids = _unique_ids(rng, sum(n_studies), 5)
    patients: list[list[_Study]] = []
    k = 0
    for subject, ns, split, sex in zip(subjects, n_studies, splits, sexes, strict=True):
        base_day = int(rng.integers(0, 365 * 95))  # shifted dates: 2100-2195
        day = base_day
        studies = []
        for _ in range(int(ns)):
            day += int(rng.integers(1, 400))
            date = np.datetime64("2100-01-01") + np.timedelta64(day, "D")
            seconds = int(rng.integers(0, 86400))
            hh, mm, ss = seconds // 3600, seconds // 60 % 60, seconds % 60
            ms = int(rng.integers(0, 1000))
            time_value = hh * 10000 + mm * 100 + ss + ms / 1000
            kind = str(rng.choice(STUDY_KINDS, p=STUDY_KIND_P))
            studies.append(
                _Study(
                    study_id=study_ids[k],
                    subject_id=subject,
                    kind=kind,
                    date=str(date).replace("-", ""),
                    time=repr(round(time_value, 3)),
                    images=_plan_images(rng, kind),
                    split=split,
                    sex=sex,
                )
            )
            k += 1
        patients.append(studies)
    ids = _dicom_ids(rng, sum(len(s.images) for p in patients for s in p))
    it = iter(ids)
    for p in patients:
        for s in p:
            for im in s.images:
                im.dicom_id = next(it)
    return patients


def _plan_images(rng: np.random.Generator, kind: str) -> list[_Image]:
    lateral = "LATERAL" if rng.random() < 0.7 else "LL"
    views = {
        "PA_LAT": ["PA", lateral] + (["PA"] if rng.random() < 0.5 else []),
        "PA": ["PA"],
        "AP": ["AP"] + (["AP"] if rng.random() < 0.2 else []),
        "AP_LAT": ["AP", lateral],
        "LAT": [lateral],
    }[kind]
    if rng.random() < 0.04:
        views.append(str(rng.choice(RARE_VIEWS)))
    out = []
    for v in views:
        vp, code = v, schema.VIEW_CODE_MEANINGS[v]
        if rng.random() < P_MISSING_VIEW:
            vp = ""
            if rng.random() >= 0.6:
                code = ""
        if v == "AP":
            orientation = str(rng.choice(["Recumbent", "Erect", ""], p=[0.6, 0.3, 0.1]))
        else:
            orientation = "Erect" if rng.random() < 0.93 else ""
        out.append(_Image("", v, vp, code, orientation))
    return out


def _sample_labels(
    rng: np.random.Generator, study: _Study, previous: dict[str, float] | None = None
) -> None:
    """A fresh draw of the study's labels; with `previous` (the patient's previous study), each
    finding and Support Devices then keeps its previous value with probability P_PERSIST."""
    lab: dict[str, float] = dict.fromkeys(schema.LABELS, math.nan)
    normal = rng.random() < P_NORMAL[study.split]
    for name in FINDINGS_LABELS:
        u = rng.random()
        if normal:
            lab[name] = 0.0 if u < 0.35 else math.nan
        elif u < DEMO_PREVALENCE[name]:
            lab[name] = 1.0
        elif u < DEMO_PREVALENCE[name] + P_UNCERTAIN:
            lab[name] = -1.0
        elif u < DEMO_PREVALENCE[name] + P_UNCERTAIN + P_NEGATIVE:
            lab[name] = 0.0
    if not normal and not any(lab[n] in (1.0, -1.0) for n in FINDINGS_LABELS):
        lab[FINDINGS_LABELS[int(rng.integers(len(FINDINGS_LABELS)))]] = 1.0
    u = rng.random()
    p1, p0, pu = P_SUPPORT
    if u < p1:
        lab[schema.SUPPORT_DEVICES] = 1.0
    elif u < p1 + p0:
        lab[schema.SUPPORT_DEVICES] = 0.0
    elif u < p1 + p0 + pu:
        lab[schema.SUPPORT_DEVICES] = -1.0
    keep = rng.random(len(FINDINGS_LABELS) + 1) < P_PERSIST
    if previous is not None:
        for name, kept in zip((*FINDINGS_LABELS, schema.SUPPORT_DEVICES), keep, strict=True):
            if kept:
                lab[name] = previous[name]
    study.labels = lab
    _fix_no_finding(lab)


def _fix_no_finding(lab: dict[str, float]) -> None:
    """No Finding is 1 exactly when no finding other than Support Devices is 1 or -1, else blank."""
    abnormal = any(lab[n] in (1.0, -1.0) for n in FINDINGS_LABELS)
    lab[schema.NO_FINDING] = math.nan if abnormal else 1.0


def _guarantee_positives(rng: np.random.Generator, studies: list[_Study], min_pos: int) -> None:
    """Make each label positive in at least `min_pos` of these (PA, labelled) studies."""
    if not studies:
        return
    nf = schema.NO_FINDING
    normal = [s for s in studies if s.labels[nf] == 1.0]
    abnormal = [s for s in studies if s.labels[nf] != 1.0]
    while len(normal) < min_pos and len(abnormal) > len(studies) // 2:
        s = abnormal.pop(int(rng.integers(len(abnormal))))
        for n in FINDINGS_LABELS:
            if s.labels[n] in (1.0, -1.0):
                s.labels[n] = 0.0
        _fix_no_finding(s.labels)
        normal.append(s)
    for name in (*FINDINGS_LABELS, schema.SUPPORT_DEVICES):
        pool = studies if name == schema.SUPPORT_DEVICES else abnormal
        have = sum(s.labels[name] == 1.0 for s in pool)
        candidates = [s for s in pool if s.labels[name] != 1.0]
        need = min(min_pos - have, len(candidates))
        if need > 0:
            for i in rng.choice(len(candidates), size=need, replace=False):
                candidates[int(i)].labels[name] = 1.0
    for s in studies:
        _fix_no_finding(s.labels)


def _plan(seed: int, n_patients: int) -> list[_Study]:
    rng = np.random.default_rng([seed, 0])
    patients = _plan_patients(rng, n_patients)
    studies = [s for p in patients for s in p]
    for patient in patients:
        previous = None
        for s in patient:  # in date order
            _sample_labels(rng, s, previous)
            previous = s.labels
    # A few studies without a chexpert row and a few rows with every label blank (as in the real
    # files), taken from train so that validate/test keep the PA studies counted on above.
    train = [s for s in studies if s.split == "train"]
    n_odd = max(1, round(0.015 * len(studies)))
    picks = rng.choice(len(train), size=min(len(train), 2 * n_odd), replace=False)
    for j, i in enumerate(picks):
        s = train[int(i)]
        if j < n_odd:
            s.has_row = False
        s.labels = dict.fromkeys(schema.LABELS, math.nan)
    min_pos = MIN_POSITIVES if n_patients >= 100 else max(1, n_patients // 20)
    for split in ("validate", "test"):
        pa = [
            s
            for s in studies
            if s.split == split
            and s.has_row
            and any(im.view_position == "PA" for im in s.images)
            and not all(math.isnan(v) for v in s.labels.values())
        ]
        _guarantee_positives(rng, pa, min_pos)
    return studies


_VALUE_KIND = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}


def _departed(
    rng: np.random.Generator, labels: dict[str, float], changes: dict[str, dict[float, float]]
) -> dict[str, float]:
    """A copy of `labels` in which each finding and Support Devices departs per `changes` (one
    draw per cell); No Finding is then recomputed."""
    lab = dict(labels)
    for name in (*FINDINGS_LABELS, schema.SUPPORT_DEVICES):
        v = lab[name]
        table = changes["blank" if math.isnan(v) else _VALUE_KIND[v]]
        u, acc = rng.random(), 0.0
        for new, p in table.items():
            acc += p
            if u < acc:
                lab[name] = new
                break
    _fix_no_finding(lab)
    return lab


def _negbio_labels(seed: int, studies: list[_Study]) -> dict[int, dict[str, float]]:
    """The NegBio file's rows: every study with a chexpert row, its labels departing from the
    CheXpert ones per NEGBIO_CHANGES (rows with every label blank stay blank). Drawn from their
    own generator, so the rest of the tree is the same with or without them."""
    rng = np.random.default_rng([seed, 5])
    out: dict[int, dict[str, float]] = {}
    for study in sorted(studies, key=lambda s: s.study_id):
        if not study.has_row:
            continue
        if all(math.isnan(v) for v in study.labels.values()):
            out[study.study_id] = dict(study.labels)
        else:
            out[study.study_id] = _departed(rng, study.labels, NEGBIO_CHANGES)
    return out


def _radiologist_labels(seed: int, studies: list[_Study]) -> dict[int, dict[str, float]]:
    """Radiologist labels for about half of the labelled PA test studies, keyed by study_id.

    Drawn from their own generator, so the CheXpert labels, images and reports are the same with
    or without them. Each cell departs from the CheXpert value per `RADIOLOGIST_CHANGES`; No
    Finding is then 1 exactly when no finding other than Support Devices is 1 or -1, else blank.
    """
    rng = np.random.default_rng([seed, 3])
    labelled = [
        s
        for s in sorted(studies, key=lambda s: s.study_id)
        if s.split == "test" and s.has_row and not all(math.isnan(v) for v in s.labels.values())
    ]
    pool = [s for s in labelled if any(im.view_position == "PA" for im in s.images)] or labelled
    if not pool:
        return {}
    k = max(1, round(P_RADIOLOGIST * len(pool)))
    chosen = sorted(int(i) for i in rng.choice(len(pool), size=k, replace=False))
    return {pool[i].study_id: _departed(rng, pool[i].labels, RADIOLOGIST_CHANGES) for i in chosen}


# ------------------------------------------------------------------------------- MIMIC-IV


def _stamp(t: np.datetime64) -> str:
    """`2180-05-06 22:23:00`, MIMIC-IV's time format."""
    return str(t.astype("datetime64[s]")).replace("T", " ")


def _study_datetime(s: _Study) -> np.datetime64:
    whole = f"{int(float(s.time)):06d}"
    return np.datetime64(
        f"{s.date[:4]}-{s.date[4:6]}-{s.date[6:]}T{whole[:2]}:{whole[2:4]}:{whole[4:]}"
    )


@dataclass
class _MimicIV:
    patients: list[list]
    admissions: list[list]
    absent: frozenset[int]


def _mimic_iv(seed: int, studies: list[_Study]) -> _MimicIV:
    """MIMIC-IV's patients and admissions rows for the demo's patients (own generator).

    Each patient: the sex drawn with their studies, an anchor age and year such that their ages
    at the studies spread over every age group, 1-5 admissions around their studies with race
    and insurance values that vary between admissions. Some patients are absent from both files,
    some have no admission.
    """
    rng = np.random.default_rng([seed, 4])
    by_patient: dict[int, list[_Study]] = {}
    for s in sorted(studies, key=lambda s: (s.subject_id, s.date, s.study_id)):
        by_patient.setdefault(s.subject_id, []).append(s)
    hadm_ids = iter(_unique_ids(rng, 6 * len(by_patient), 2))
    groups, weights = list(DEMO_RACE_P), np.array(list(DEMO_RACE_P.values()))
    subjects = list(by_patient)
    picks = rng.permutation(len(subjects))
    n_absent = max(1, round(P_ABSENT_FROM_MIMIC_IV * len(subjects)))
    n_lonely = max(1, round(P_NO_ADMISSION * len(subjects)))
    absent = {subjects[int(i)] for i in picks[:n_absent]}
    lonely = {subjects[int(i)] for i in picks[n_absent : n_absent + n_lonely]}
    patients, admissions = [], []
    for subject, own in by_patient.items():
        if subject in absent:
            continue
        first_year = int(own[0].date[:4])
        anchor_year = first_year + int(rng.integers(-2, 3))
        anchor_age = int(np.clip(round(rng.normal(60, 19)), 18, 91))
        dod = ""
        if rng.random() < 0.08:
            last = np.datetime64(f"{own[-1].date[:4]}-{own[-1].date[4:6]}-{own[-1].date[6:]}")
            dod = str(last + np.timedelta64(int(rng.integers(30, 900)), "D"))
        patients.append(
            [
                subject,
                own[0].sex,
                anchor_age,
                anchor_year,
                str(rng.choice(ANCHOR_YEAR_GROUPS)),
                dod,
            ]
        )
        if subject in lonely:
            continue
        group = groups[int(rng.choice(len(groups), p=weights / weights.sum()))]
        old = anchor_age >= 65
        base_insurance = str(
            rng.choice(
                INSURANCE_VALUES,
                p=(0.75, 0.08, 0.1, 0.05, 0.02) if old else (0.15, 0.3, 0.4, 0.12, 0.03),
            )
        )
        for _ in range(int(rng.integers(1, 6))):
            around = _study_datetime(own[int(rng.integers(len(own)))]).astype("datetime64[m]")
            admit = around + np.timedelta64(
                int(rng.integers(-45 * 24, 45 * 24)) * 60 + int(rng.integers(60)), "m"
            )
            discharge = admit + np.timedelta64(int(rng.integers(6, 14 * 24)) * 60, "m")
            u = rng.random()
            if group == "Unknown" or 0.78 <= u < 0.9:
                race = str(rng.choice(DEMO_RACE_VALUES["Unknown"]))
            elif u < 0.78:
                values = DEMO_RACE_VALUES[group]
                race = values[0] if rng.random() < 0.7 else str(rng.choice(values))
            else:
                other = [g for g in groups if g not in (group, "Unknown")]
                race = DEMO_RACE_VALUES[str(rng.choice(other))][0]
            v = rng.random()
            insurance = (
                base_insurance
                if v < 0.7
                else ("" if v > 0.98 else str(rng.choice(INSURANCE_VALUES)))
            )
            kind = str(rng.choice(ADMISSION_TYPES))
            emergency = kind in ("EW EMER.", "DIRECT EMER.")
            ed_in = admit - np.timedelta64(int(rng.integers(120, 600)), "m")
            ed_out = admit + np.timedelta64(int(rng.integers(0, 120)), "m")
            provider = "P" + "".join(
                str(rng.choice(list("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"))) for _ in range(5)
            )
            admissions.append(
                [
                    subject,
                    next(hadm_ids),
                    _stamp(admit),
                    _stamp(discharge),
                    "",
                    kind,
                    provider,
                    "EMERGENCY ROOM" if emergency else str(rng.choice(ADMISSION_LOCATIONS)),
                    str(rng.choice(DISCHARGE_LOCATIONS)),
                    insurance,
                    str(rng.choice(LANGUAGES)),
                    str(rng.choice(MARITAL)),
                    race,
                    _stamp(ed_in) if emergency else "",
                    _stamp(ed_out) if emergency else "",
                    0,
                ]
            )
    patients.sort(key=lambda r: r[0])
    admissions.sort(key=lambda r: (r[0], r[1]))
    return _MimicIV(patients, admissions, frozenset(absent))


# ---------------------------------------------------------------------------------- images


def _geometry(view: str, size: int, rng: np.random.Generator) -> tuple[int, int]:
    short = round(size * REAL_COLUMNS / REAL_ROWS)
    # PA films are portrait, like the real ones; other views are sometimes landscape.
    if view != "PA" and rng.random() < 0.15:
        return short, size
    return size, short


def _smooth_ellipse(yy, xx, cy, cx, ry, rx, soft=0.15):
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - r) / soft, 0.0, 1.0)


def _polyline(yy, xx, pts, width, asp):
    """1 on a polyline of the given half-width (in units of the image height), fading out."""
    d = np.full(np.broadcast(yy, xx).shape, np.inf, dtype=np.float32)
    for (y0, x0), (y1, x1) in itertools.pairwise(pts):
        vy, vx = y1 - y0, (x1 - x0) * asp
        length2 = vy * vy + vx * vx + 1e-12
        py, px = yy - y0, (xx - x0) * asp
        t = np.clip((py * vy + px * vx) / length2, 0.0, 1.0)
        d = np.minimum(d, np.hypot(py - t * vy, px - t * vx))
    return np.clip(1.5 - d / width, 0.0, 1.0)


def _triangle(yy, xx, pts, asp, soft=0.01):
    """1 inside the triangle `pts` ((y, x) fractions), fading out over `soft`."""
    p = [(y, x * asp) for y, x in pts]
    (ay, ax), (by, bx), (cy, cx) = p
    orient = 1.0 if (by - ay) * (cx - ax) - (bx - ax) * (cy - ay) > 0 else -1.0
    m = None
    for (y0, x0), (y1, x1) in ((p[0], p[1]), (p[1], p[2]), (p[2], p[0])):
        vy, vx = y1 - y0, x1 - x0
        dist = orient * (vy * (xx * asp - x0) - vx * (yy - y0)) / (math.hypot(vy, vx) + 1e-12)
        e = np.clip(dist / soft, 0.0, 1.0)
        m = e if m is None else np.minimum(m, e)
    return m


def _background(yy, xx, asp, view, rng):
    j = lambda s=0.015: rng.uniform(-s, s)  # noqa: E731
    img = np.full(np.broadcast(yy, xx).shape, 14.0, dtype=np.float32)
    if view in ("LATERAL", "LL"):
        img += 125 * _smooth_ellipse(yy, xx, 0.55 + j(), 0.5 + j(), 0.5, 0.42, 0.08)
        img -= 70 * _smooth_ellipse(yy, xx, 0.45 + j(), 0.48 + j(), 0.3, 0.28, 0.3)
        img += 45 * _smooth_ellipse(yy, xx, 0.5, 0.8 + j(), 0.55, 0.05, 0.5)
        img += 40 * _smooth_ellipse(yy, xx, 0.62 + j(), 0.38 + j(), 0.15, 0.14, 0.4)
        lungs = _smooth_ellipse(yy, xx, 0.45, 0.48, 0.3, 0.28, 0.3)
    else:
        img += 125 * _smooth_ellipse(yy, xx, 0.56 + j(), 0.5 + j(), 0.52, 0.45, 0.08)
        left = _smooth_ellipse(yy, xx, 0.45 + j(), 0.31 + j(), 0.29, 0.155, 0.25)
        right = _smooth_ellipse(yy, xx, 0.45 + j(), 0.69 + j(), 0.29, 0.155, 0.25)
        lungs = left + right
        img -= 75 * lungs
        img += 35 * _smooth_ellipse(yy, xx, 0.35, 0.5 + j(0.01), 0.3, 0.07, 0.3)
        img += 50 * _smooth_ellipse(yy, xx, 0.63 + j(), 0.55 + j(), 0.1, 0.12, 0.3)
        img += 18 * (np.abs(xx - 0.5) < 0.03)
        for side in (-1, 1):
            img += 30 * _polyline(
                yy, xx, [(0.2, 0.5 + side * 0.05), (0.14, 0.5 + side * 0.3)], 0.012, asp
            )
    ribs = np.sin(2 * np.pi * (yy * (10 + j(1.0)) + 2.0 * (xx - 0.5) ** 2 + rng.random()))
    img += 7 * ribs * lungs
    # Low-frequency mottle, then fine noise; contrast and brightness vary per film.
    small = rng.normal(0, 1, size=(6, 5)).astype(np.float32)
    h, w = img.shape
    mottle = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    img += 8 * mottle
    return img


def _signatures(yy, xx, asp, labels, rng, faint=()):
    """The sum of every planted signature for these labels (see the module's table); those in
    `faint` at FAINT_CONTRAST of their contrast."""
    out = np.zeros(np.broadcast(yy, xx).shape, dtype=np.float32)

    def jit():
        return rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.85, 1.15)

    for name, value in labels.items():
        if not (value == 1.0 or value == -1.0) or name == schema.NO_FINDING:
            continue
        s = (1.0 if value == 1.0 else 0.5) * (FAINT_CONTRAST if name in faint else 1.0)
        dy, dx, k = jit()
        if name == "Atelectasis":
            pts = [
                (0.18 + dy, 0.25 + dx),
                (0.18 + dy, 0.42 + dx),
                (0.18 + 0.16 * k + dy, 0.41 + dx),
            ]
            out += s * 70 * _triangle(yy, xx, pts, asp)
        elif name == "Cardiomegaly":
            out += s * 60 * _smooth_ellipse(yy, xx, 0.62 + dy, 0.55 + dx, 0.13 * k, 0.18 * k, 0.2)
        elif name == "Consolidation":
            cy, cx = 0.36 + dy, 0.70 + dx
            m = _smooth_ellipse(yy, xx, cy, cx, 0.07 * k, 0.085 * k, 0.06)
            br = _polyline(
                yy, xx, [(cy + 0.05, cx - 0.03), (cy, cx), (cy - 0.04, cx + 0.04)], 0.006, asp
            )
            out += s * (85 * m - 45 * m * br)
        elif name == "Edema":
            for side in (-1, 1):
                hy, hx = 0.42 + dy, 0.5 + side * (0.1 + dx / 2)
                out += s * 25 * _smooth_ellipse(yy, xx, hy, hx, 0.12 * k, 0.1 * k, 1.0)
                for ang in np.linspace(-0.9, 0.9, 5):
                    ey = hy + 0.14 * k * math.sin(ang)
                    ex = hx + side * 0.14 * k * math.cos(ang) / asp
                    out += s * 40 * _polyline(yy, xx, [(hy, hx), (ey, ex)], 0.006, asp)
        elif name == "Enlarged Cardiomediastinum":
            wy = np.clip((0.15 * k - np.abs(yy - 0.27 - dy)) / 0.03, 0, 1)
            wx = np.clip((0.11 * k - np.abs(xx - 0.5 - dx / 2)) / 0.02, 0, 1)
            out += s * 50 * wy * wx
        elif name == "Fracture":
            y0, x0 = 0.36 + dy, 0.15 + dx / 2
            pts = [(y0 + 0.03 * i * k, x0 + (0.06 if i % 2 else 0.0)) for i in range(5)]
            out += s * 100 * _polyline(yy, xx, pts, 0.008, asp)
        elif name == "Lung Lesion":
            out += (
                s
                * 95
                * _smooth_ellipse(yy, xx, 0.47 + dy, 0.33 + dx, 0.035 * k, 0.035 * k / asp, 0.35)
            )
        elif name == "Lung Opacity":
            out += (
                s * 60 * _smooth_ellipse(yy, xx, 0.6 + dy, 0.72 + dx, 0.09 * k, 0.09 * k / asp, 0.7)
            )
        elif name == "Pleural Effusion":
            top = 0.64 + dy - 0.07 * np.clip((0.45 - xx) / 0.3, 0, 1) * k
            m = np.clip((yy - top) / 0.015, 0, 1) * np.clip((0.47 - xx) / 0.02, 0, 1)
            out += s * 75 * m * _smooth_ellipse(yy, xx, 0.5, 0.31, 0.32, 0.19, 0.1)
        elif name == "Pleural Other":
            out += s * 80 * _smooth_ellipse(yy, xx, 0.43 + dy, 0.82 + dx / 2, 0.13 * k, 0.028, 0.4)
        elif name == "Pneumonia":
            for _ in range(6):
                by, bx = 0.62 + dy + rng.uniform(-0.06, 0.06), 0.3 + dx + rng.uniform(-0.07, 0.07)
                r = rng.uniform(0.024, 0.034) * k
                out += s * 55 * _smooth_ellipse(yy, xx, by, bx, r, r / asp, 0.5)
        elif name == "Pneumothorax":
            cy, cx = 0.25 + dy, 0.70 + dx
            outer = _smooth_ellipse(yy, xx, cy, cx, 0.1 * k, 0.13 * k, 0.08)
            inner = _smooth_ellipse(yy, xx, cy + 0.035, cx - 0.035, 0.09 * k, 0.1 * k, 0.08)
            crescent = np.clip(outer - inner, 0, 1)
            rim = np.clip(1 - np.abs(inner - 0.5) * 4, 0, 1) * outer
            out += s * (-70 * crescent + 45 * rim)
        elif name == "Support Devices":
            pts = [
                (0.0, 0.56 + dx),
                (0.2, 0.545 + dx),
                (0.4 + dy, 0.52 + dx),
                (0.52 + dy, 0.55 + dx),
            ]
            out += s * 130 * _polyline(yy, xx, pts, 0.006, asp)
    return out


def render_image(
    labels: dict[str, float],
    view: str,
    rows: int,
    columns: int,
    rng: np.random.Generator,
    faint: tuple[str, ...] = (),
) -> np.ndarray:
    """One synthetic film (uint8, rows x columns, air dark) with the labels' signatures (those
    in `faint` at FAINT_CONTRAST of their contrast: the planted subgroup effect)."""
    scale = min(1.0, _MAX_DRAW_SIDE / max(rows, columns))
    h, w = max(8, round(rows * scale)), max(8, round(columns * scale))
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    asp = w / h
    img = _background(yy, xx, asp, view, rng) + _signatures(yy, xx, asp, labels, rng, faint)
    img = img * rng.uniform(0.9, 1.1) + rng.uniform(-8, 8)
    if (h, w) != (rows, columns):
        img = np.asarray(Image.fromarray(img).resize((columns, rows), Image.BILINEAR))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * 5.0
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _encode_jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# --------------------------------------------------------------------------------- reports


def _wrap(text: str, first: str = "") -> list[str]:
    """Lines of at most 79 characters, each starting with a space."""
    lines = textwrap.wrap(
        first + text, width=78, break_long_words=False, break_on_hyphens=False
    ) or [first.rstrip()]
    return [" " + ln for ln in lines]


def _label_sentences(rng: np.random.Generator, labels: dict[str, float]):
    pos, neg, unc = [], [], []
    for name in (*FINDINGS_LABELS, schema.SUPPORT_DEVICES):
        v = labels.get(name, math.nan)
        if math.isnan(v):
            continue
        choices = PHRASES[name][{1.0: 0, 0.0: 1, -1.0: 2}[v]]
        side = SIDES.get(name, "right")
        text = str(rng.choice(choices)).format(side=side, Side=side.capitalize())
        text = text[0].upper() + text[1:]
        {1.0: pos, 0.0: neg, -1.0: unc}[v].append(text)
    return pos, neg, unc


def _report(rng: np.random.Generator, study: _Study) -> tuple[str, dict[str, str], tuple[str, ...]]:
    """(file text, sections by meaning, raw headers in order)."""
    pos, neg, unc = _label_sentences(rng, study.labels)
    normal = study.labels.get(schema.NO_FINDING) == 1.0
    findings = pos + unc + neg
    rng.shuffle(findings)
    if rng.random() < 0.5:
        findings.append(str(rng.choice(FILLER)))
    if normal:
        findings.insert(0, str(rng.choice(NO_FINDING_PHRASES)))
    impression = pos + unc
    if normal:
        impression = [str(rng.choice(NO_FINDING_PHRASES)), *impression]
    if not findings:
        findings = [str(rng.choice(FILLER))]
    if not impression:
        impression = [str(rng.choice(NEUTRAL_IMPRESSION))]
    findings_text, impression_text = "  ".join(findings), "  ".join(impression)

    u = rng.random()
    ind_header = (
        "INDICATION"
        if u < 0.8
        else str(rng.choice(["CLINICAL HISTORY", "REASON FOR EXAMINATION", "HISTORY", "NDICATION"]))
    )
    ind_key = "history" if ind_header in ("CLINICAL HISTORY", "HISTORY") else "indication"
    imp_header = (
        "IMPRESSION" if rng.random() < 0.85 else str(rng.choice(["IMPRESSON", "CONCLUSION"]))
    )
    layout = rng.choice(
        ["full", "no_impression", "no_findings", "combined", "bare"],
        p=[0.72, 0.08, 0.08, 0.04, 0.08],
    )
    sections: list[tuple[str, str, str, bool]] = [  # header, key, text, block (text below header)
        ("EXAMINATION", "examination", VIEW_PROCEDURES[study.kind], False),
        (ind_header, ind_key, str(rng.choice(INDICATIONS)), False),
        ("TECHNIQUE", "technique", TECHNIQUES[study.kind], False),
        ("COMPARISON", "comparison", str(rng.choice(COMPARISONS)), False),
    ]
    paragraphs: list[str] = []
    if layout == "full":
        sections += [
            ("FINDINGS", "findings", findings_text, True),
            (imp_header, "impression", impression_text, True),
        ]
    elif layout == "no_impression":
        sections += [("FINDINGS", "findings", findings_text, True)]
    elif layout == "no_findings":  # the impression then carries the negations too
        full = (
            "  ".join([*impression, *neg])
            if (pos or unc or normal)
            else "  ".join(neg or impression)
        )
        sections += [(imp_header, "impression", full, True)]
    elif layout == "combined":
        sections += [("FINDINGS AND IMPRESSION", "impression", findings_text, True)]
    else:  # bare paragraphs, no headers at all: parsers fall back on the last paragraph
        sections = []
        paragraphs = [f"{TECHNIQUES[study.kind].upper()} ___", findings_text, impression_text]

    lines: list[str] = []
    recorded: dict[str, str] = {}
    headers: list[str] = []
    if rng.random() < 0.05:
        add = "Findings were discussed with Dr. ___ by telephone at ___ on ___."
        lines += [" " * 33 + "FINAL ADDENDUM", *_wrap(add, "ADDENDUM:  "), " ", " " + "_" * 78]
        recorded["addendum"] = add
        headers.append("ADDENDUM")
    lines.append(" " * 33 + "FINAL REPORT")
    for i, (header, key, text, block) in enumerate(sections):
        if i:
            lines.append(" ")
        if block:
            lines += [f" {header}: ", " ", *_wrap(text)]
        else:
            lines += _wrap(text, f"{header}:  ")
        recorded[key] = " ".join(text.split())
        headers.append(header)
    for i, para in enumerate(paragraphs):
        if i:
            lines.append(" ")
        lines += _wrap(para)
    if paragraphs:
        recorded["last_paragraph"] = " ".join(paragraphs[-1].split())
    return "\n".join(lines) + "\n", recorded, tuple(headers)


# ---------------------------------------------------------------------------------- writing


def _fmt_label(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


def _csv(header: tuple[str, ...], rows: list[list]) -> bytes:
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return text.getvalue().encode("utf-8")


def _csv_gz(header: tuple[str, ...], rows: list[list]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(_csv(header, rows))
    return buf.getvalue()


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out}: not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise CxrError(
                f"{out}: directory is not empty and is not a previous cxr demo tree; "
                "choose an empty directory"
            )
        # A previous demo tree (complete or interrupted): remove exactly what a demo writes.
        csvs = (*schema.REQUIRED_CSVS, schema.NEGBIO_CSV)
        written = (*(f"{c}.gz" for c in csvs), schema.RADIOLOGIST_CSV)
        for name in (*written, schema.SHA256SUMS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / schema.FILES_DIR, ignore_errors=True)
        shutil.rmtree(out / MIMIC_IV_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MARKER, "synthetic MIMIC-CXR-JPG tree written by `cxr demo`\n")


def write_demo(
    out_dir: str | os.PathLike[str],
    n_patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    image_size: int | None = None,
    progress: bool = True,
) -> DemoSummary:
    """Write a synthetic MIMIC-CXR-JPG tree into `out_dir` (empty, or a previous demo tree)."""
    if n_patients < 3:
        raise CxrError(f"--n-patients must be at least 3 (one per split), got {n_patients}")
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if not 16 <= size <= 8192:
        raise CxrError(f"--image-size must be between 16 and 8192, got {size}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    studies = _plan(seed, n_patients)

    from cxr.core.progress import make_progress

    sums: dict[str, str] = {}
    reports: dict[int, dict[str, str]] = {}
    headers: dict[int, tuple[str, ...]] = {}
    report_paths: dict[int, str] = {}
    by_patient: dict[int, list[_Study]] = {}
    for s in studies:
        by_patient.setdefault(s.subject_id, []).append(s)
    report_rng = np.random.default_rng([seed, 1])
    image_counter = 0
    bar = make_progress() if progress else contextlib.nullcontext()
    with bar:
        task = bar.add_task("demo patients", total=len(by_patient)) if progress else None
        for patient_studies in by_patient.values():
            for s in patient_studies:
                for im in s.images:
                    rng = np.random.default_rng([seed, 2, image_counter])
                    image_counter += 1
                    im.rows, im.columns = _geometry(im.view, size, rng)
                    arr = render_image(s.labels, im.view, im.rows, im.columns, rng, s.faint)
                    data = _encode_jpeg(arr)
                    rel = schema.image_relpath(s.subject_id, s.study_id, im.dicom_id)
                    write_bytes_atomic(out / rel, data)
                    sums[rel] = hashlib.sha256(data).hexdigest()
                text, recorded, hdrs = _report(report_rng, s)
                official, guide = schema.report_relpaths(s.subject_id, s.study_id)
                rel = guide if report_rng.random() < 0.1 else official
                write_text_atomic(out / rel, text)
                reports[s.study_id], headers[s.study_id] = recorded, hdrs
                report_paths[s.study_id] = rel
            if progress:
                bar.advance(task)

    # Tables last, SHA256SUMS very last: a tree without them is incomplete by construction.
    studies.sort(key=lambda s: (s.subject_id, s.study_id))
    chexpert = [
        [s.subject_id, s.study_id, *(_fmt_label(s.labels[n]) for n in schema.LABELS)]
        for s in studies
        if s.has_row
    ]
    split_rows, meta_rows = [], []
    for s in studies:
        proc = VIEW_PROCEDURES[s.kind]
        for im in sorted(s.images, key=lambda i: i.dicom_id):
            split_rows.append([im.dicom_id, s.study_id, s.subject_id, s.split])
            meta_rows.append(
                [
                    im.dicom_id,
                    s.subject_id,
                    s.study_id,
                    proc,
                    im.view_position,
                    im.rows,
                    im.columns,
                    s.date,
                    s.time,
                    proc,
                    im.view_code,
                    im.orientation,
                ]
            )
    radiologist = _radiologist_labels(seed, studies)
    radiologist_rows = [
        [study, *(_fmt_label(lab[n]) for n in schema.LABELS)]
        for study, lab in sorted(radiologist.items())
    ]
    negbio = _negbio_labels(seed, studies)
    subject_of = {s.study_id: s.subject_id for s in studies}
    negbio_rows = sorted(
        [subject_of[study], study, *(_fmt_label(lab[n]) for n in schema.LABELS)]
        for study, lab in negbio.items()
    )
    mimic_iv = _mimic_iv(seed, studies)
    iv_tables = {
        f"{MIMIC_IV_MODULE}/{PATIENTS}": _csv_gz(PATIENTS_COLUMNS, mimic_iv.patients),
        f"{MIMIC_IV_MODULE}/{ADMISSIONS}": _csv_gz(ADMISSIONS_COLUMNS, mimic_iv.admissions),
    }
    iv_sums = []
    for name, data in iv_tables.items():
        write_bytes_atomic(out / MIMIC_IV_DIR / MIMIC_IV_VERSION / name, data)
        iv_sums.append(f"{hashlib.sha256(data).hexdigest()} {name}\n")
    # MIMIC-IV is another project with its own listing beside its files (`cxr download
    # demographics` writes the same layout).
    write_text_atomic(
        out / MIMIC_IV_DIR / MIMIC_IV_VERSION / schema.SHA256SUMS, "".join(sorted(iv_sums))
    )
    tables = {
        f"{schema.CHEXPERT_CSV}.gz": _csv_gz(schema.CHEXPERT_COLUMNS, chexpert),
        f"{schema.SPLIT_CSV}.gz": _csv_gz(schema.SPLIT_COLUMNS, split_rows),
        f"{schema.METADATA_CSV}.gz": _csv_gz(schema.METADATA_COLUMNS, meta_rows),
        f"{schema.NEGBIO_CSV}.gz": _csv_gz(schema.CHEXPERT_COLUMNS, negbio_rows),
    }
    if radiologist_rows:  # plain CSV, as PhysioNet ships it
        tables[schema.RADIOLOGIST_CSV] = _csv(RADIOLOGIST_COLUMNS, radiologist_rows)
    for name, data in tables.items():
        write_bytes_atomic(out / name, data)
        sums[name] = hashlib.sha256(data).hexdigest()
    lines = [f"{sums[p]} {p}\n" for p in sorted(sums, key=lambda p: p.encode())]
    write_text_atomic(out / schema.SHA256SUMS, "".join(lines))
    summary = _summarize(out, seed, size, studies, reports, headers, report_paths)
    return dataclasses.replace(
        summary,
        radiologist_labels=radiologist,
        negbio_labels=negbio,
        sexes={s.subject_id: s.sex for s in studies},
        absent_from_mimic_iv=mimic_iv.absent,
        admissions=len(mimic_iv.admissions),
    )


def _summarize(out, seed, size, studies, reports, headers, report_paths) -> DemoSummary:
    zero = lambda: dict.fromkeys(schema.SPLITS, 0)  # noqa: E731
    patients: dict[str, set[int]] = {sp: set() for sp in schema.SPLITS}
    n_studies, n_images, pa_images, pa_studies = zero(), zero(), zero(), zero()
    views: dict[str, int] = {}
    recoverable = 0
    for s in studies:
        patients[s.split].add(s.subject_id)
        n_studies[s.split] += 1
        n_images[s.split] += len(s.images)
        n_pa = sum(im.view_position == "PA" for im in s.images)
        pa_images[s.split] += n_pa
        pa_studies[s.split] += n_pa > 0
        for im in s.images:
            views[im.view_position] = views.get(im.view_position, 0) + 1
            recoverable += im.view_position == "" and im.view_code != ""
    return DemoSummary(
        out_dir=out,
        seed=seed,
        image_size=size,
        patients={k: len(v) for k, v in patients.items()},
        studies=n_studies,
        images=n_images,
        pa_images=pa_images,
        pa_studies=pa_studies,
        views=dict(sorted(views.items(), key=lambda kv: -kv[1])),
        reports=reports,
        report_headers=headers,
        report_paths=report_paths,
        missing_label_studies=frozenset(s.study_id for s in studies if not s.has_row),
        blank_label_studies=frozenset(
            s.study_id
            for s in studies
            if s.has_row and all(math.isnan(v) for v in s.labels.values())
        ),
        recoverable_missing_views=recoverable,
        labels={s.study_id: dict(s.labels) for s in studies if s.has_row},
    )

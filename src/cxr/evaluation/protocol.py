"""The evaluation protocol: which rows are scored, against which targets, and their fingerprint.

One protocol for every run, whatever its training label policy: blank (not mentioned) is negative;
uncertain (-1) is excluded (default) or negative; the targets come from the CheXpert labeler's
columns of the manifest, from its NegBio columns (the second labeler MIMIC-CXR-JPG ships), or from
the radiologists' labels of the 2.1.0 test set; the unit is the
study (mean of its images' probabilities) or the image. Two results are comparable exactly when
their protocols and row fingerprints match: a fingerprint is a SHA-256 over the sorted evaluated
(unit, label, target) triples, and each label has its own over its (unit, target) pairs, so results
with different label sets can still be compared on the labels they share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cxr.core.errors import CxrError

LABEL_SOURCES = ("chexpert", "negbio", "radiologist")
LEVELS = ("study", "image")
SPLITS = ("validate", "test", "train")
UNCERTAIN_RULES = ("exclude", "negative")
THRESHOLD_SPLIT = "validate"  # where operating points are chosen
_SOURCE_NAMES = {
    "chexpert": "CheXpert labeler",
    "negbio": "NegBio labeler",
    "radiologist": "radiologists' labels",
}


@dataclass(frozen=True)
class Protocol:
    split: str = "validate"
    level: str = "study"
    uncertain: str = "exclude"
    labels: str = "chexpert"
    views: tuple[str, ...] = ("PA",)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("split", SPLITS),
            ("level", LEVELS),
            ("uncertain", UNCERTAIN_RULES),
            ("labels", LABEL_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise CxrError(
                    f"--{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if self.labels == "radiologist" and self.split != "test":
            raise CxrError(
                "--labels radiologist: radiologists labelled test studies only; use --split test"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["views"] = list(self.views)
        d["blank"] = "negative"
        d["thresholds_from"] = f"{THRESHOLD_SPLIT} split, {self.threshold_labels} labels"
        return d

    @property
    def threshold_labels(self) -> str:
        """The labels operating points are chosen on: the validate split's NegBio labels under
        the NegBio protocol, else its CheXpert labels (radiologists labelled test studies only)."""
        return "NegBio" if self.labels == "negbio" else "CheXpert"

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        return cls(
            split=d["split"],
            level=d["level"],
            uncertain=d["uncertain"],
            labels=d["labels"],
            views=tuple(d.get("views") or ()),
        )

    def describe(self) -> str:
        unc = "uncertain excluded" if self.uncertain == "exclude" else "uncertain as negative"
        source = _SOURCE_NAMES[self.labels]
        return (
            f"{self.split} split, {self.level} level, {'/'.join(self.views) or 'all'} views, "
            f"{source}, blank as negative, {unc}"
        )

    def differences(self, other: Protocol) -> list[str]:
        """`field: a vs b` for every field that differs (what `cxr compare` names when refusing)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]


def _digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
    return h.hexdigest()


def _target_text(value: float) -> str:
    return "1" if value == 1 else "0"


def label_fingerprint(units: Sequence, y: np.ndarray) -> str:
    """SHA-256 over one label's evaluated (unit, target) pairs, sorted by unit.

    `units` are the rows' study ids (study level) or dicom ids (image level); NaN targets are the
    rows the protocol excludes and are not part of the fingerprint.
    """
    y = np.asarray(y, dtype=np.float64)
    pairs = sorted((str(u), _target_text(t)) for u, t in zip(units, y, strict=True) if t == t)
    return _digest([f"{u}\t{t}\n" for u, t in pairs])


def rows_fingerprint(units: Sequence, labels: Sequence[str], y: np.ndarray) -> str:
    """SHA-256 over all evaluated (unit, label, target) triples, sorted by unit then label."""
    y = np.asarray(y, dtype=np.float64)
    triples = sorted(
        (str(u), label, _target_text(y[i, j]))
        for i, u in enumerate(units)
        for j, label in enumerate(labels)
        if y[i, j] == y[i, j]
    )
    return _digest([f"{u}\t{lab}\t{t}\n" for u, lab, t in triples])

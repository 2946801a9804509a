"""The label policy: how CheXpert's 1 / 0 / -1 / blank become training targets and loss masks.

Pure numpy, no torch, so it can be tested exhaustively and reused by evaluation.

Values in the manifest are exactly the CSV's: 1.0 positive, 0.0 negative, -1.0 uncertain, NaN not
mentioned. A policy maps each to a (target, mask) pair; mask 0 means "left out of the loss and of the
metrics for that label".

- `uncertain`: "ignore" (mask 0), "zeros" (target 0) or "ones" (target 1).
- `missing`:   "zeros" (target 0: not mentioned taken as absent) or "ignore" (mask 0).
- `overrides`: per label, {"uncertain": ..., "missing": ...}, either key optional.

No Finding is only ever 1 or blank in MIMIC-CXR. Under `missing="zeros"` its blanks become 0, so its
negatives are exactly "some finding was mentioned" and the label is learnable. Under
`missing="ignore"` every No Finding negative is masked: the label has positives only, contributes a
trivial loss and no AUROC. Use `missing="zeros"` for it (globally or as an override).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr.core.errors import CxrError
from cxr.mimic import schema

UNCERTAIN_CHOICES = ("ignore", "zeros", "ones")
MISSING_CHOICES = ("zeros", "ignore")


@dataclass(frozen=True)
class LabelPolicy:
    uncertain: str = "ignore"
    missing: str = "zeros"
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check("uncertain", self.uncertain, UNCERTAIN_CHOICES)
        _check("missing", self.missing, MISSING_CHOICES)
        for label, rule in self.overrides.items():
            if not isinstance(rule, Mapping):
                raise CxrError(f"label policy override for {label!r} must be a table, got {rule!r}")
            unknown = set(rule) - {"uncertain", "missing"}
            if unknown:
                raise CxrError(
                    f"label policy override for {label!r} has unknown keys {sorted(unknown)}; "
                    "valid: uncertain, missing"
                )
            if "uncertain" in rule:
                _check(f"overrides.{label}.uncertain", rule["uncertain"], UNCERTAIN_CHOICES)
            if "missing" in rule:
                _check(f"overrides.{label}.missing", rule["missing"], MISSING_CHOICES)

    def rule_for(self, label: str) -> tuple[str, str]:
        """(uncertain, missing) in force for one label."""
        rule = self.overrides.get(label, {})
        return rule.get("uncertain", self.uncertain), rule.get("missing", self.missing)

    def to_dict(self) -> dict:
        """Plain values only (checkpoints load with weights_only=True; configs are TOML)."""
        return {
            "uncertain": self.uncertain,
            "missing": self.missing,
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LabelPolicy:
        unknown = set(d) - {"uncertain", "missing", "overrides"}
        if unknown:
            raise CxrError(
                f"unknown label policy keys {sorted(unknown)}; valid: uncertain, missing, overrides"
            )
        return cls(
            uncertain=d.get("uncertain", "ignore"),
            missing=d.get("missing", "zeros"),
            overrides={k: dict(v) for k, v in dict(d.get("overrides", {})).items()},
        )


def _check(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CxrError(f"label policy {name}={value!r} is not one of {', '.join(choices)}")


def apply_policy(
    labels: np.ndarray, label_names: Sequence[str], policy: LabelPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Map raw labels (N, L) with values 1/0/-1/NaN to (targets, mask), both float32 (N, L).

    Masked entries have target 0 so that a masked loss never sees NaN.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[1] != len(label_names):
        raise CxrError(
            f"labels have shape {labels.shape}, expected (N, {len(label_names)}) for {len(label_names)} label names"
        )
    unknown = set(policy.overrides) - set(label_names)
    if unknown:
        raise CxrError(f"label policy overrides name unknown labels: {sorted(unknown)}")
    finite = labels[np.isfinite(labels)]
    bad = np.setdiff1d(np.unique(finite), np.array(schema.LABEL_VALUES, dtype=np.float32))
    if bad.size:
        raise CxrError(f"labels hold values other than 1, 0, -1 and blank: {bad[:5].tolist()}")

    targets = np.zeros(labels.shape, dtype=np.float32)
    mask = np.ones(labels.shape, dtype=np.float32)
    for j, name in enumerate(label_names):
        col = labels[:, j]
        uncertain, missing = policy.rule_for(name)
        targets[col == 1.0, j] = 1.0
        unc = col == -1.0
        if uncertain == "ones":
            targets[unc, j] = 1.0
        elif uncertain == "ignore":
            mask[unc, j] = 0.0
        if missing == "ignore":
            mask[np.isnan(col), j] = 0.0
    return targets, mask

"""Who the model fails: figures per subgroup (sex, age group, race group, insurance, view), the
CheXclusion underdiagnosis rate, the largest gap per attribute, with small cells suppressed.

Pure functions over arrays, like `cxr.evaluation.scoring`. For each attribute and each of its
values (a subgroup: the evaluated units whose attribute has that value; missing is "Unknown"):

- `patients` and `studies` in the subgroup;
- per label: AUROC with its patient-bootstrap interval, and TPR (sensitivity) and FPR
  (1 - specificity) at the label's Youden threshold chosen on validate;
- `underdiagnosis`: CheXclusion's measure, the share of the subgroup's studies with a finding
  (No Finding negative) that the model calls No Finding at No Finding's Youden threshold, i.e.
  No Finding's false-positive rate, with its interval.

Intervals come from the resamples the overall figures use (`cxr.stats.bootstrap.bootstrap_subsets`):
a subgroup's figure in resample b is computed on that subgroup's rows of resample b, so the number
of the subgroup's patients varies between resamples as it would between test sets, and the gap
between two subgroups gets its own interval from the same resamples.

Suppression: a subgroup with fewer than `min_cell` patients is reported as suppressed, with every
figure (its counts included) null, and plays no part in the gaps; nothing downstream (JSON, HTML,
figures, printed lines) ever sees its numbers. This protects the cells themselves; see the README
for what a reader can still derive from the split's total count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from cxr.core.errors import CxrError
from cxr.core.jsonsafe import json_safe

ATTRIBUTES: tuple[str, ...] = ("sex", "age_group", "race_group", "insurance", "view_position")
DEFAULT_MIN_CELL = 20
UNKNOWN = "Unknown"
UNDERDIAGNOSIS_LABEL = "No Finding"
UNDERDIAGNOSIS = (
    "share of the studies with a finding (No Finding negative) that the model calls No Finding "
    "at No Finding's Youden threshold (No Finding's false-positive rate; CheXclusion)"
)
# Where a study's images have different views (a manifest of several views), its view_position
# is the sorted views joined with this.
VIEW_JOIN = "+"


def parse_attributes(text: str | None) -> tuple[str, ...]:
    """`sex,age_group` -> ("sex", "age_group"), checked; "all" stays ("all",) until
    `resolve_attributes` knows the manifest's columns."""
    if not text:
        return ()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return ("all",)
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise CxrError(
            f"--subgroups: unknown attribute {unknown[0]!r}; choose from {', '.join(ATTRIBUTES)} "
            "(or all)"
        )
    return tuple(dict.fromkeys(names))


def resolve_attributes(attributes: Sequence[str], columns: Sequence[str]) -> tuple[str, ...]:
    """("all",) -> every attribute the manifest has a column for; anything else unchanged."""
    if tuple(attributes) == ("all",):
        return tuple(a for a in ATTRIBUTES if a in columns)
    return tuple(attributes)


def _value_order(attribute: str, values: set[str]) -> list[str]:
    """Values in their natural order (age groups by age, race groups as defined), Unknown last."""
    from cxr.mimic.demographics import AGE_GROUPS, RACE_GROUP_ORDER

    known = {
        "sex": ["Female", "Male"],
        "age_group": [name for name, _, _ in AGE_GROUPS],
        "race_group": list(RACE_GROUP_ORDER),
    }.get(attribute, [])
    first = [v for v in known if v in values and v != UNKNOWN]
    rest = sorted(v for v in values if v not in first and v != UNKNOWN)
    return first + rest + ([UNKNOWN] if UNKNOWN in values else [])


def unit_attributes(
    rows: pl.DataFrame, units: pl.DataFrame, level: str, attributes: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each attribute's value per unit (aligned with `units`, which has `study_id`, and `dicom_id`
    at image level), from the manifest image rows; null is "Unknown".

    The demographic columns are per study in the manifest. At study level `view_position` is the
    study's views joined with "+" when its images differ (only with a manifest of several views).
    """
    keys = ["study_id"] if level == "study" else ["study_id", "dicom_id"]
    out: dict[str, np.ndarray] = {}
    for attribute in attributes:
        column = pl.col(attribute).cast(pl.String)
        if level == "study" and attribute == "view_position":
            per_unit = rows.group_by("study_id").agg(
                column.drop_nulls().unique().sort().str.join(VIEW_JOIN).alias(attribute)
            )
            per_unit = per_unit.with_columns(
                pl.when(pl.col(attribute) == "")
                .then(None)
                .otherwise(pl.col(attribute))
                .alias(attribute)
            )
        elif level == "study":
            per_unit = rows.group_by("study_id").agg(column.first())
        else:
            per_unit = rows.select(*keys, column)
        aligned = units.select(keys).join(per_unit, on=keys, how="left", maintain_order="left")
        out[attribute] = aligned[attribute].fill_null(UNKNOWN).to_numpy().astype(str)
    return out


def _interval(samples: np.ndarray, ci: float):
    from cxr.stats.bootstrap import percentile_interval

    return percentile_interval(samples, ci)


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def score_subgroups(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    thresholds: Mapping[str, float | None],
    groups: np.ndarray,
    studies: np.ndarray,
    attributes: Mapping[str, np.ndarray],
    min_cell: int = DEFAULT_MIN_CELL,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`subgroups`, `gaps`) for metrics.json.

    `y`, `p` (n, L) targets (NaN excluded) and probabilities of the evaluated units; `thresholds`
    each label's Youden threshold (None: none); `groups` and `studies` (n,) each unit's patient
    and study (patients stay in memory); `attributes` maps an attribute to its (n,) values.

    subgroups: `{attribute: {value: {"patients", "studies", "suppressed", "underdiagnosis":
    {"rate", "ci"}, "labels": {label: {"auroc", "auroc_ci", "tpr", "fpr"}}}}}`, every key but
    `suppressed` null for a value with fewer than `min_cell` patients.
    gaps: `{attribute: {"underdiagnosis": GAP or None, "auroc": {label: GAP}}}` with GAP =
    `{"gap", "ci", "higher", "lower"}`: the largest difference between two shown values (higher
    minus lower), its interval from the same resamples, and which values.
    """
    from sklearn.metrics import roc_auc_score

    from cxr.stats.bootstrap import bootstrap_subsets
    from cxr.stats.metrics import one_class_reason

    if min_cell < 1:
        raise CxrError(f"--min-cell must be at least 1, got {min_cell}")
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups, studies = np.asarray(groups), np.asarray(studies)
    labels = list(labels)
    t = np.array(
        [np.nan if thresholds.get(lab) is None else float(thresholds[lab]) for lab in labels]
    )
    nf = labels.index(UNDERDIAGNOSIS_LABEL) if UNDERDIAGNOSIS_LABEL in labels else None

    # Which cells are shown: decided before any figure is computed.
    cells: dict[str, dict[str, np.ndarray | None]] = {}
    for attribute, values in attributes.items():
        values = np.asarray(values).astype(str)
        if values.shape != (y.shape[0],):
            raise ValueError(f"attribute {attribute!r}: one value per unit needed")
        cells[attribute] = {}
        for value in _value_order(attribute, set(values.tolist())):
            mask = values == value
            shown = np.unique(groups[mask]).size >= min_cell
            cells[attribute][value] = mask if shown else None
    shown_masks = {
        f"{a}\x00{v}": m for a, per in cells.items() for v, m in per.items() if m is not None
    }
    boot = (
        bootstrap_subsets(y, p, groups, shown_masks, t, n_bootstrap, seed)
        if n_bootstrap and shown_masks
        else {}
    )

    subgroups: dict[str, Any] = {}
    gaps: dict[str, Any] = {}
    for attribute, per in cells.items():
        subgroups[attribute] = {}
        for value, mask in per.items():
            if mask is None:
                subgroups[attribute][value] = {
                    "patients": None,
                    "studies": None,
                    "suppressed": True,
                    "underdiagnosis": None,
                    "labels": None,
                }
                continue
            samples = boot.get(f"{attribute}\x00{value}")
            entry: dict[str, Any] = {
                "patients": int(np.unique(groups[mask]).size),
                "studies": int(np.unique(studies[mask]).size),
                "suppressed": False,
                "underdiagnosis": {"rate": None, "ci": None},
                "labels": {},
            }
            for j, label in enumerate(labels):
                keep = mask & ~np.isnan(y[:, j])
                yj, pj = y[keep, j], p[keep, j]
                fig: dict[str, Any] = {"auroc": None, "auroc_ci": None, "tpr": None, "fpr": None}
                if yj.size and one_class_reason(yj) is None:
                    fig["auroc"] = float(roc_auc_score(yj, pj))
                    if samples is not None:
                        fig["auroc_ci"] = _interval(samples["auroc"][:, j], ci)
                if yj.size and not np.isnan(t[j]):
                    decided = pj >= t[j]
                    pos = yj == 1
                    fig["tpr"] = _ratio((decided & pos).sum(), pos.sum())
                    fig["fpr"] = _ratio((decided & ~pos).sum(), (~pos).sum())
                entry["labels"][label] = fig
            if nf is not None:
                rate = entry["labels"][UNDERDIAGNOSIS_LABEL]["fpr"]
                entry["underdiagnosis"] = {
                    "rate": rate,
                    "ci": None
                    if samples is None or rate is None
                    else _interval(samples["fpr"][:, nf], ci),
                }
            subgroups[attribute][value] = entry
        gaps[attribute] = _gaps(subgroups[attribute], boot, attribute, labels, nf, ci)
    return json_safe(subgroups), json_safe(gaps)


def _gap(
    points: dict[str, float], samples: dict[str, np.ndarray] | None, ci: float
) -> dict[str, Any] | None:
    """The largest difference among `points` (value -> figure), with its interval when the
    per-resample figures of the two values are given."""
    if len(points) < 2:
        return None
    higher = max(points, key=lambda v: (points[v], v))
    lower = min(points, key=lambda v: (points[v], v))
    interval = None
    if samples is not None:
        interval = _interval(samples[higher] - samples[lower], ci)
    return {
        "gap": points[higher] - points[lower],
        "ci": interval,
        "higher": higher,
        "lower": lower,
    }


def _gaps(per_value: dict, boot: dict, attribute: str, labels: list[str], nf, ci: float) -> dict:
    shown = {v: e for v, e in per_value.items() if not e["suppressed"]}

    def resampled(key: str, j: int) -> dict[str, np.ndarray] | None:
        if not boot:
            return None
        return {v: boot[f"{attribute}\x00{v}"][key][:, j] for v in shown}

    out: dict[str, Any] = {"underdiagnosis": None, "auroc": {}}
    if nf is not None:
        rates = {v: e["underdiagnosis"]["rate"] for v, e in shown.items()}
        rates = {v: r for v, r in rates.items() if r is not None}
        out["underdiagnosis"] = _gap(rates, resampled("fpr", nf), ci)
    for j, label in enumerate(labels):
        aurocs = {v: e["labels"][label]["auroc"] for v, e in shown.items()}
        aurocs = {v: a for v, a in aurocs.items() if a is not None}
        gap = _gap(aurocs, resampled("auroc", j), ci)
        if gap is not None:
            out["auroc"][label] = gap
    return out


def largest_auroc_gap(gaps: dict) -> tuple[str, dict] | None:
    """The label with the largest AUROC gap of one attribute's gaps, or None."""
    per_label = gaps.get("auroc") or {}
    if not per_label:
        return None
    label = max(per_label, key=lambda k: (per_label[k]["gap"], k))
    return label, per_label[label]

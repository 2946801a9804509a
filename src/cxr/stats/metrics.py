"""Metric building blocks for multi-label chest X-ray classifiers (numpy + scikit-learn, no torch):
evaluation targets, calibration, the Youden threshold and study aggregation.

`y` is an (n,) or (n, L) float array of evaluation targets, 1.0, 0.0 or NaN where the protocol
excludes the row; `p` the probabilities. The whole evaluation table (operating points, patient
intervals, macro averages) is `cxr.evaluation.scoring`'s; the resampling is `cxr.stats.bootstrap`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# --------------------------------------------------------------------------- evaluation targets

UNCERTAIN_RULES = ("exclude", "negative")


def eval_targets(raw: np.ndarray, uncertain: str = "exclude") -> np.ndarray:
    """Evaluation targets from raw CheXpert values (1, 0, -1, NaN), the same for every run.

    The evaluation protocol is independent of how a model was trained: blank (not mentioned) is
    negative, the field's convention; uncertain (-1) is excluded (NaN) by default, or negative with
    `uncertain="negative"` (what CheXclusion and most MIMIC-CXR baselines report). A training label
    policy therefore never changes which rows are scored.
    """
    if uncertain not in UNCERTAIN_RULES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_RULES}, got {uncertain!r}")
    out = np.asarray(raw, dtype=np.float64).copy()
    out[np.isnan(out)] = 0.0
    out[out == -1.0] = np.nan if uncertain == "exclude" else 0.0
    return out


# --------------------------------------------------------------------------- basic figures


def one_class_reason(y: np.ndarray) -> str | None:
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 and n_neg == 0:
        return "no evaluable rows (all excluded by the label policy)"
    if n_pos == 0:
        return "no positive rows"
    if n_neg == 0:
        return "no negative rows"
    return None


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width bins on [0, 1]: sum over bins of (n_b / n) * |mean(y) - mean(p)|."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / y.size)


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """Per equal-width bin: mean predicted probability, observed frequency and count (for plots)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(bins, weights=p, minlength=n_bins) / count
        freq = np.bincount(bins, weights=y, minlength=n_bins) / count
    return {"mean_p": mean_p.tolist(), "freq": freq.tolist(), "count": count.tolist()}


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float | None:
    """The threshold maximizing sensitivity + specificity - 1 (ties -> higher); None without both classes."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y)
    if one_class_reason(y) is not None:
        return None
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive): never a useful operating point.
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    j = np.round(tpr - fpr, 12)  # so float noise does not break ties between equal J
    # thresholds are decreasing, so argmax (first maximum) picks the highest tied threshold.
    return float(thr[int(np.argmax(j))])


# --------------------------------------------------------------------------- study aggregation


def aggregate_studies(pred_df, labels: Sequence[str] | None = None):
    """Study-level predictions: the mean of a study's image probabilities, one row per study.

    `pred_df` is a polars DataFrame with `study_id` and one column per label (`dicom_id` and any
    other column are dropped). Sorted by study_id; adds `n_images`.
    """
    import polars as pl

    if labels is None:
        labels = [c for c in pred_df.columns if c not in ("dicom_id", "study_id", "subject_id")]
    return (
        pred_df.group_by("study_id")
        .agg(pl.len().alias("n_images"), *[pl.col(c).mean() for c in labels])
        .sort("study_id")
        .select("study_id", *labels, "n_images")
    )

"""Evaluation metrics for multi-label chest X-ray classifiers (numpy + scikit-learn, no torch).

Conventions:
- `y` is an (n, L) float array of evaluation targets: 1.0, 0.0, or NaN where the label is excluded
  for that row (uncertain, or blank under `missing=ignore`); `p` the (n, L) probabilities.
- Every per-label figure is computed on that label's non-excluded rows only.
- A label without both classes gets `None` figures and a `reason` string instead of a number.
- The threshold rule: per label, the threshold maximizing Youden's J (sensitivity + specificity - 1)
  on the validate split, ties broken towards the higher threshold; it is then applied unchanged to the
  evaluated split (`p >= threshold` is positive). If validate lacks both classes for a label, the
  threshold falls back to 0.5 and `threshold_source` says so.
- The AUROC interval is a percentile bootstrap that resamples the caller's `groups` (rows when
  None; all labels share each resample): a drawn group brings all its rows. The resampling, the
  vectorized AUROC and the interval are `cxr.stats.bootstrap`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.stats.bootstrap import bootstrap_metrics, percentile_interval

THRESHOLD_RULE = (
    "per label, the threshold maximizing Youden's J (sensitivity + specificity - 1) on the "
    "validate split (ties -> higher threshold), applied unchanged to the evaluated split "
    "(positive when p >= threshold); 0.5 when validate lacks both classes"
)
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class MetricsConfig:
    n_bootstrap: int = 1000
    seed: int = 0
    ci: float = 0.95
    ece_bins: int = 15


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


def _both_classes_reason(y: np.ndarray) -> str | None:
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
    if _both_classes_reason(y) is not None:
        return None
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive): never a useful operating point.
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    j = np.round(tpr - fpr, 12)  # so float noise does not break ties between equal J
    # thresholds are decreasing, so argmax (first maximum) picks the highest tied threshold.
    return float(thr[int(np.argmax(j))])


def choose_thresholds(
    y_val: np.ndarray, p_val: np.ndarray, labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per label `{"threshold": t, "source": "validate" | "default (...)"}` from the validate split."""
    out: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        keep = ~np.isnan(y_val[:, j])
        t = youden_threshold(y_val[keep, j], p_val[keep, j])
        if t is None:
            reason = _both_classes_reason(y_val[keep, j])
            out[label] = {
                "threshold": DEFAULT_THRESHOLD,
                "source": f"default ({reason} in validate)",
            }
        else:
            out[label] = {"threshold": t, "source": "validate"}
    return out


def _confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = p >= threshold
    pos = y == 1
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    tn = int((~pred & ~pos).sum())
    return tp, fp, fn, tn


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _operating_point(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | None]:
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


# --------------------------------------------------------------------------- the whole table


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


PER_LABEL_KEYS = (
    "auroc",
    "auroc_ci",
    "auprc",
    "prevalence",
    "n_pos",
    "n_neg",
    "threshold",
    "threshold_source",
    "sensitivity",
    "specificity",
    "ppv",
    "f1",
    "ece",
    "brier",
)
AVERAGED_KEYS = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "f1", "ece", "brier")


def compute_metrics(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    thresholds: Mapping[str, Mapping[str, Any]],
    groups: np.ndarray | None = None,
    config: MetricsConfig = MetricsConfig(),
) -> dict[str, Any]:
    """Per-label figures plus macro and micro averages; JSON-ready (None for undefined values).

    Returns `{"labels": {label: {...}}, "macro": {...}, "micro": {...}}`. A label lacking a class
    has every figure None except its counts, and `reason`.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.shape[1] != len(labels):
        raise ValueError(
            f"targets {y.shape} and probabilities {p.shape} do not match {len(labels)} labels"
        )
    # One set of resamples of `groups` for every label (rows when no groups are given).
    boot = (
        bootstrap_metrics(
            y,
            p,
            np.arange(len(y)) if groups is None else np.asarray(groups),
            {},
            config.n_bootstrap,
            config.seed,
        )["auroc"]
        if config.n_bootstrap
        else None
    )

    per_label: dict[str, dict[str, Any]] = {}
    pooled_y, pooled_p, pooled_pred = [], [], []
    for j, label in enumerate(labels):
        keep = ~np.isnan(y[:, j])
        yj, pj = y[keep, j], p[keep, j]
        n_pos, n_neg = int((yj == 1).sum()), int((yj == 0).sum())
        thr = thresholds.get(label, {"threshold": DEFAULT_THRESHOLD, "source": "default"})
        entry: dict[str, Any] = dict.fromkeys(PER_LABEL_KEYS)
        entry.update(
            n_pos=n_pos,
            n_neg=n_neg,
            prevalence=n_pos / (n_pos + n_neg) if n_pos + n_neg else None,
            threshold=thr["threshold"],
            threshold_source=thr["source"],
        )
        reason = _both_classes_reason(yj)
        if reason is not None:
            entry["reason"] = reason
            per_label[label] = entry
            continue
        entry["auroc"] = float(roc_auc_score(yj, pj))
        entry["auprc"] = float(average_precision_score(yj, pj))
        if boot is not None:
            entry["auroc_ci"] = percentile_interval(boot[:, j], config.ci)
        entry.update(_operating_point(*_confusion(yj, pj, thr["threshold"])))
        entry["ece"] = expected_calibration_error(yj, pj, config.ece_bins)
        entry["brier"] = float(np.mean((pj - yj) ** 2))
        per_label[label] = entry
        pooled_y.append(yj)
        pooled_p.append(pj)
        pooled_pred.append(pj >= thr["threshold"])

    evaluable = [v for v in per_label.values() if "reason" not in v]
    macro: dict[str, Any] = {"n_labels": len(evaluable)}
    for key in AVERAGED_KEYS:
        vals = [v[key] for v in evaluable if v[key] is not None]
        macro[key] = float(np.mean(vals)) if vals else None

    micro: dict[str, Any] = dict.fromkeys(AVERAGED_KEYS)
    if pooled_y:
        yy, pp, pred = (
            np.concatenate(pooled_y),
            np.concatenate(pooled_p),
            np.concatenate(pooled_pred),
        )
        micro["auroc"] = float(roc_auc_score(yy, pp))
        micro["auprc"] = float(average_precision_score(yy, pp))
        pos = yy == 1
        # Each label at its own threshold; the decisions are pooled.
        tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
        fn, tn = int((~pred & pos).sum()), int((~pred & ~pos).sum())
        micro.update(_operating_point(tp, fp, fn, tn))
        micro["ece"] = expected_calibration_error(yy, pp, config.ece_bins)
        micro["brier"] = float(np.mean((pp - yy) ** 2))
    micro["n_labels"] = len(evaluable)
    return _clean({"labels": per_label, "macro": macro, "micro": micro})


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

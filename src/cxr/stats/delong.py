"""DeLong's test for the AUROCs of correlated ROC curves (two models scored on the same rows).

DeLong, DeLong & Clarke-Pearson (1988) write the AUROC as a two-sample U-statistic and estimate its
variance, and the covariance between models scored on the same rows, from the structural components
(placement values): V10 of a positive is the fraction of negatives scored below it, V01 of a
negative the fraction of positives scored above it, ties counting 1/2. Sun & Xu (2014) compute both
from midranks in O(n log n):

    V10_i = (T_z(x_i) - T_x(x_i)) / n      V01_j = 1 - (T_z(y_j) - T_y(y_j)) / m

where m, n are the numbers of positives and negatives, T_z the midrank among all rows, T_x among the
positives and T_y among the negatives. AUC = mean(V10) = mean(V01) and
Cov(AUC) = S10 / m + S01 / n, with S10, S01 the sample covariance matrices (ddof 1) of the
components across models.

What it assumes: rows (studies) are independent draws. Rows of the same patient are correlated in
MIMIC-CXR, so on study rows the standard error is too small; `cxr.stats.bootstrap.paired_delta`
resamples patients and is the interval to trust on such data (docs/statistics.md).
"""

from __future__ import annotations

import math

import numpy as np


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with tied values given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid = ends - (counts - 1) / 2.0
    return mid[inverse.ravel()]


def _split(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(positive scores (K, m), negative scores (K, n)) over the non-NaN rows; None without a class."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if y.ndim != 1 or scores.ndim != 2 or scores.shape[1] != y.size:
        raise ValueError(f"need y (n,) and scores (K, n); got {y.shape}, {scores.shape}")
    keep = ~np.isnan(y)
    pos, neg = keep & (y == 1), keep & (y != 1)
    if not pos.any() or not neg.any():
        return None
    return scores[:, pos], scores[:, neg]


def _placements(x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components V10 (K, m) and V01 (K, n) from positive and negative scores."""
    m, n = x.shape[1], z.shape[1]
    v10 = np.empty_like(x)
    v01 = np.empty_like(z)
    for k in range(x.shape[0]):
        t_all = _midranks(np.concatenate([x[k], z[k]]))
        v10[k] = (t_all[:m] - _midranks(x[k])) / n
        v01[k] = 1.0 - (t_all[m:] - _midranks(z[k])) / m
    return v10, v01


def _cov(v: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof 1) across columns; NaN when there is a single column."""
    k, count = v.shape
    if count < 2:
        return np.full((k, k), np.nan)
    d = v - v.mean(axis=1, keepdims=True)
    return d @ d.T / (count - 1)


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(AUCs (K,), covariance matrix (K, K)) of K models' scores (K, n) on the same rows.

    `y` (n,) is 1/0, NaN rows are left out. None when a class is missing. The covariance is NaN
    when there is a single positive or a single negative (a sample covariance needs two).
    """
    split = _split(y, scores)
    if split is None:
        return None
    x, z = split
    v10, v01 = _placements(x, z)
    aucs = v10.mean(axis=1)
    return aucs, _cov(v10) / x.shape[1] + _cov(v01) / z.shape[1]


def delong_auc_variance(y: np.ndarray, p: np.ndarray) -> tuple[float, float] | None:
    """(AUC, DeLong variance of the AUC) of scores `p` (n,); None when a class is missing."""
    result = delong_covariance(y, np.asarray(p, dtype=np.float64)[None, :])
    if result is None:
        return None
    aucs, cov = result
    return float(aucs[0]), float(cov[0, 0])


def _two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def delong_test(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> dict[str, float] | None:
    """DeLong's two-sided test of AUROC_a == AUROC_b for two models scored on the same rows.

    Returns {"auc_a", "auc_b", "delta" (auc_a - auc_b), "se" (of delta), "z", "p_value", "n_pos",
    "n_neg"}; the p-value is from the normal distribution. None when `y` (NaN rows left out) lacks
    a class. When the two models place every row identically (same ranks, e.g. one score a
    monotone transform of the other) delta and se are both 0: z is 0 and the p-value 1. With a
    single positive or negative the se is undefined: se, z and p_value are NaN.
    """
    split = _split(y, np.stack([np.asarray(p_a, np.float64), np.asarray(p_b, np.float64)]))
    if split is None:
        return None
    x, z_neg = split
    m, n = x.shape[1], z_neg.shape[1]
    v10, v01 = _placements(x, z_neg)
    auc_a, auc_b = float(v10[0].mean()), float(v10[1].mean())
    # The variance of the difference from the differences of the components (equal to
    # S_aa + S_bb - 2 S_ab) is exactly 0 when the placements are identical.
    d10, d01 = v10[0] - v10[1], v01[0] - v01[1]
    delta = float(d10.mean())
    result = {"auc_a": auc_a, "auc_b": auc_b, "delta": delta, "n_pos": m, "n_neg": n}
    if m < 2 or n < 2:
        return {**result, "se": math.nan, "z": math.nan, "p_value": math.nan}
    var = float(_cov(d10[None, :])[0, 0] / m + _cov(d01[None, :])[0, 0] / n)
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        if delta == 0.0:
            return {**result, "se": 0.0, "z": 0.0, "p_value": 1.0}
        return {**result, "se": 0.0, "z": math.copysign(math.inf, delta), "p_value": 0.0}
    z = delta / se
    return {**result, "se": se, "z": z, "p_value": _two_sided_p(z)}

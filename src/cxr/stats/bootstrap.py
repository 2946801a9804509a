"""The cluster (patient) bootstrap: resamples, vectorized figures per resample, intervals.

Why patients: in MIMIC-CXR a patient contributes many studies (about 11 per patient in the test
split) and findings persist from one study of a patient to the next, so a patient's studies are not
independent draws. Resampling studies treats them as independent and gives intervals that are too
narrow; resampling patients, each drawn patient bringing all of its rows, keeps that dependence in
every resample (docs/statistics.md has the argument and the measured coverage).

Every figure is computed for many resamples at once from a (B, n) array of row multiplicities: a
resample is a weighting of the original rows, so scores are sorted once per label and each resample
costs a few vectorized array operations, never a per-resample call into scikit-learn.

Conventions, as in `cxr.stats.metrics`: `y` holds 1.0 (positive), 0.0 (negative) or NaN (excluded
for that label); a row is predicted positive when `p >= threshold`. Patient keys (`groups`) are used
in memory only; nothing here prints, logs or writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OPERATING_POINT_FIGURES = ("sensitivity", "specificity", "ppv", "f1")


# --------------------------------------------------------------------------- resamples


def _group_draws(groups: np.ndarray, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-group multiplicities (B, G) int32, each row's group code (n,)).

    A resample is fully described by how often each group was drawn; the (B, n) row multiplicities
    are `per_group[:, codes]`. Sums over rows that are constant within a group (confusion counts)
    are computed at group level from this, G being ten times smaller than n in MIMIC-CXR.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be one key per row (1-D), got shape {groups.shape}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.ravel()
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, max(n_groups, 1), size=(n_bootstrap, n_groups))
    # One bincount over all resamples: offset resample b's draws by b * G.
    offsets = (np.arange(n_bootstrap, dtype=np.int64) * n_groups)[:, None]
    per_group = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n_groups)
    return per_group.reshape(n_bootstrap, n_groups).astype(np.int32), codes


def resample_counts(groups: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(B, n) int32 multiplicities of the n rows when the groups are resampled with replacement.

    `groups` holds one key per row (patient ids, or any integers); the keys are mapped to 0..G-1
    with `np.unique`. Each of the B resamples draws G groups with replacement, and a drawn group
    brings all of its rows, so the rows of one group always share a multiplicity. The same `seed`
    gives the same resamples (and the same ones `bootstrap_metrics` and `paired_delta` use).
    """
    per_group, codes = _group_draws(groups, n_bootstrap, seed)
    return per_group[:, codes]


# --------------------------------------------------------------------------- ranking figures


def _rank_sums(
    y: np.ndarray, p: np.ndarray, source: np.ndarray, cols: np.ndarray, with_ap: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per resample: positive weight, negative weight, Mann-Whitney sum and AP sum, each (B,).

    Row i's weights are `source[:, cols[i]]`: the (B, n) weights themselves with cols = 0..n-1, or
    the (B, G) per-group draws with each row's group code, which avoids building (B, n) at all.

    Positives and negatives are each sorted by score once. With `cn` the cumulative negative weight
    in score order, a positive of score s has `cn[< s]` negatives below it and `cn[<= s] - cn[< s]`
    tied with it (counted 1/2), so the Mann-Whitney sum is sum_i w_i (cn[< s_i] + cn[<= s_i]) / 2.
    Average precision as scikit-learn defines it (one threshold per distinct score, precision at a
    threshold counting its whole tie group) is sum over positives of w_i * precision(>= s_i) / P:
    summing w_i over a tie group gives that group's recall step times its precision.
    Integer weights (bootstrap counts) are summed as integers, which is exact and, along rows,
    several times faster than a float cumulative sum. `with_ap=False` skips the AP sum (None).
    """
    is_pos = y == 1
    pos_idx, neg_idx = np.flatnonzero(is_pos), np.flatnonzero(~is_pos)
    order = np.argsort(p[pos_idx], kind="stable")
    pos_idx, sp = pos_idx[order], p[pos_idx][order]
    order = np.argsort(p[neg_idx], kind="stable")
    neg_idx, sn = neg_idx[order], p[neg_idx][order]

    # Cast before summing: a cumulative sum that casts as it goes is ten times slower.
    dtype = np.int64 if np.issubdtype(source.dtype, np.integer) else np.float64
    source = source.astype(dtype, copy=False)
    n_boot = source.shape[0]
    wp = np.take(source, cols[pos_idx], axis=1)
    cn = np.empty((n_boot, sn.size + 1), dtype=dtype)
    cn[:, 0] = 0
    np.cumsum(np.take(source, cols[neg_idx], axis=1), axis=1, out=cn[:, 1:])
    cp = np.empty((n_boot, sp.size + 1), dtype=dtype)
    cp[:, 0] = 0
    np.cumsum(wp, axis=1, out=cp[:, 1:])
    total_pos, total_neg = cp[:, -1], cn[:, -1]

    below = np.searchsorted(sn, sp, side="left")  # negatives scored strictly lower
    upto = np.searchsorted(sn, sp, side="right")  # ... lower or tied
    neg_below = cn[:, below]
    twice_mw = (wp * (neg_below + cn[:, upto])).sum(axis=1)
    mann_whitney = 0.5 * twice_mw.astype(np.float64)
    total_pos, total_neg = total_pos.astype(np.float64), total_neg.astype(np.float64)
    if not with_ap:
        return total_pos, total_neg, mann_whitney, None

    first = np.searchsorted(sp, sp, side="left")  # first positive of each positive's tie group
    tp_ge = total_pos[:, None] - cp[:, first]  # float: the division follows
    all_ge = tp_ge + (total_neg[:, None] - neg_below)
    # all_ge >= w_i, so it is only 0 where w_i is 0 and the term does not count.
    precision = np.divide(tp_ge, all_ge, out=np.zeros(tp_ge.shape), where=all_ge > 0)
    ap_sum = np.einsum("bi,bi->b", wp.astype(np.float64, copy=False), precision)
    return total_pos, total_neg, mann_whitney, ap_sum


def _rank_sums_of(y, p, weights, with_ap: bool = True):
    """`_rank_sums` for the public (y, p, weights (B, n)) functions, with their checks."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    w = np.asarray(weights)
    if y.ndim != 1 or p.shape != y.shape or w.ndim != 2 or w.shape[1] != y.size:
        raise ValueError(
            f"need y (n,), p (n,) and weights (B, n); got {y.shape}, {p.shape}, {w.shape}"
        )
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise ValueError("y holds NaN (excluded rows): drop them before ranking")
    return _rank_sums(y, p, w, np.arange(y.size), with_ap)


def _auroc(total_pos, total_neg, mann_whitney) -> np.ndarray:
    den = total_pos * total_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, mann_whitney / den, np.nan)


def _average_precision(total_pos, ap_sum) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total_pos > 0, ap_sum / total_pos, np.nan)


def weighted_auroc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) AUROCs for B weightings of the same rows (the Mann-Whitney statistic, ties count 1/2).

    `y` (n,) is 1 for positives and anything else for negatives (drop excluded rows first), `p` (n,)
    the scores, `weights` (B, n) the multiplicity of each row in each resample. Equals
    `roc_auc_score` on the rows repeated by their weights; NaN where a resample lacks a class.
    """
    total_pos, total_neg, mann_whitney, _ = _rank_sums_of(y, p, weights, with_ap=False)
    return _auroc(total_pos, total_neg, mann_whitney)


def weighted_average_precision(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) average precision for B weightings of the same rows, as scikit-learn computes it.

    Same arguments as `weighted_auroc`. Equals `average_precision_score` on the rows repeated by
    their weights (one threshold per distinct score: tied rows enter together). NaN where a resample
    has no positive weight; a resample without negatives gives 1.0, as scikit-learn does.
    """
    total_pos, _, _, ap_sum = _rank_sums_of(y, p, weights)
    return _average_precision(total_pos, ap_sum)


def weighted_confusion(
    y: np.ndarray, decision: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn, tn), each (B,): weighted counts of the boolean `decision` against `y` == 1.

    Rows whose `y` is not 1 count as negatives: drop excluded rows first.
    """
    y = np.asarray(y)
    decision = np.asarray(decision, dtype=bool)
    w = np.asarray(weights)
    if y.ndim != 1 or decision.shape != y.shape or w.ndim != 2 or w.shape[1] != y.size:
        raise ValueError(
            f"need y (n,), decision (n,) and weights (B, n); got {y.shape}, {decision.shape}, "
            f"{w.shape}"
        )
    is_pos = y == 1
    w = w.astype(np.float64, copy=False)
    pos = w @ is_pos.astype(np.float64)
    neg = w @ (~is_pos).astype(np.float64)
    tp = w @ (decision & is_pos).astype(np.float64)
    fp = w @ (decision & ~is_pos).astype(np.float64)
    return tp, fp, pos - tp, neg - fp


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def operating_point_figures(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and F1 from (B,) counts; NaN where a denominator is 0."""
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


# --------------------------------------------------------------------------- intervals


def percentile_interval(samples: np.ndarray, ci: float = 0.95) -> list[float] | None:
    """[lo, hi]: the (1 - ci)/2 and (1 + ci)/2 quantiles of the finite bootstrap samples.

    None when fewer than half of the resamples are finite. A figure is NaN in a resample that lacks
    what it needs (AUROC without one of the classes, PPV without predicted positives); when that
    happens often, the finite resamples are a biased selection of the possible test sets (those that
    happened to contain enough positives), so a label whose resamples often lack a class has no
    trustworthy interval and gets none rather than a misleading one.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    samples = np.asarray(samples, dtype=np.float64).ravel()
    finite = samples[np.isfinite(samples)]
    if finite.size == 0 or 2 * finite.size < samples.size:
        return None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def macro_over(samples: np.ndarray, columns: Sequence[int] | np.ndarray) -> np.ndarray:
    """(B,) mean of the given label columns of (B, L) per-resample figures, for macro intervals.

    The columns are fixed by the caller (the labels the point estimate averages), so every resample
    averages the same labels. A resample in which any of them is NaN (that label lacked a class in
    the resample) gives NaN rather than a mean over fewer labels, which would be a different
    quantity; `percentile_interval` then decides whether enough resamples remain.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2:
        raise ValueError(f"samples must be (B, L), got shape {samples.shape}")
    columns = np.asarray(columns)
    if columns.dtype != bool:
        columns = columns.astype(np.intp)
    picked = samples[:, columns]
    if picked.shape[1] == 0:
        return np.full(samples.shape[0], np.nan)
    return picked.mean(axis=1)


# --------------------------------------------------------------------------- whole tables


def _check_table(y: np.ndarray, groups: np.ndarray, *probabilities: np.ndarray) -> None:
    if y.ndim != 2:
        raise ValueError(f"targets must be (n, L), got shape {y.shape}")
    for p in probabilities:
        if p.shape != y.shape:
            raise ValueError(f"probabilities {p.shape} do not match targets {y.shape}")
    if groups.shape != (y.shape[0],):
        raise ValueError(f"groups must be one key per row ({y.shape[0]},), got {groups.shape}")


def bootstrap_metrics(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    thresholds: Mapping[str, np.ndarray],
    n_bootstrap: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-resample figures for every label from ONE set of group (patient) resamples.

    `y` (n, L) targets 1/0/NaN (NaN: the row is excluded for that label), `p` (n, L) probabilities,
    `groups` (n,) the patient key of each row, `thresholds` maps an operating-point name (e.g.
    "youden", "spec90") to an (L,) array of thresholds (positive when p >= t).

    Returns (B, L) arrays: "auroc", "auprc", and "OP/sensitivity", "OP/specificity", "OP/ppv",
    "OP/f1" for each operating point OP. All labels and operating points see the same resamples
    (resample b draws the same patients for every label), so per-resample figures can be combined
    across labels (`macro_over`). Each label uses only its non-excluded rows. NaN where a resample
    lacks what a figure needs, and for a whole column when its threshold is NaN.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = np.asarray(groups)
    _check_table(y, groups, p)
    n_labels = y.shape[1]
    ops = {}
    for name, t in thresholds.items():
        t = np.asarray(t, dtype=np.float64)
        if t.shape != (n_labels,):
            raise ValueError(f"thresholds {name!r} must be ({n_labels},), got {t.shape}")
        ops[name] = t

    per_group, codes = _group_draws(groups, n_bootstrap, seed)
    per_group_f = per_group.astype(np.float64)
    n_groups = per_group.shape[1]
    out = {"auroc": np.full((n_bootstrap, n_labels), np.nan)}
    out["auprc"] = np.full((n_bootstrap, n_labels), np.nan)
    for name in ops:
        for fig in OPERATING_POINT_FIGURES:
            out[f"{name}/{fig}"] = np.full((n_bootstrap, n_labels), np.nan)

    for j in range(n_labels):
        keep = np.flatnonzero(~np.isnan(y[:, j]))
        if keep.size == 0:
            continue
        yj, pj = y[keep, j], _scored(p[keep, j], j)
        total_pos, total_neg, mann_whitney, ap_sum = _rank_sums(yj, pj, per_group, codes[keep])
        out["auroc"][:, j] = _auroc(total_pos, total_neg, mann_whitney)
        out["auprc"][:, j] = _average_precision(total_pos, ap_sum)
        live = [name for name, t in ops.items() if not np.isnan(t[j])]
        if not live:
            continue
        # A drawn patient brings all its rows, so a weighted count over rows is the per-group
        # draws times each group's count: (B, G) @ (G, k) instead of (B, n) @ (n, k).
        decisions = np.stack([pj >= ops[name][j] for name in live], axis=1)
        per_row = np.concatenate([decisions & (yj == 1)[:, None], decisions], axis=1)
        group_sums = np.stack(
            [np.bincount(codes[keep], weights=col, minlength=n_groups) for col in per_row.T],
            axis=1,
        )
        tp_all, pred_all = np.split(per_group_f @ group_sums, 2, axis=1)
        for k, name in enumerate(live):
            tp, fp = tp_all[:, k], pred_all[:, k] - tp_all[:, k]
            figs = operating_point_figures(tp, fp, total_pos - tp, total_neg - fp)
            for fig, values in figs.items():
                out[f"{name}/{fig}"][:, j] = values
    return out


def bootstrap_subsets(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    subsets: Mapping[str, np.ndarray],
    thresholds: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-resample AUROC, TPR and FPR of each subset of rows (a subgroup), for every label.

    `y`, `p`, `groups`, `n_bootstrap` and `seed` as for `bootstrap_metrics`, and the resamples are
    the same ones (the same seed draws the same patients): resample b of a subset is the subset's
    rows of resample b of the whole table, so a subgroup's figures and the overall figures of one
    resample describe the same drawn test set, and differences between subgroups can be taken
    resample by resample. `subsets` maps a name to a boolean (n,) mask; `thresholds` (L,) is the
    operating point per label (NaN: no TPR or FPR for that label).

    Returns `{name: {"auroc": (B, L), "tpr": (B, L), "fpr": (B, L)}}`, NaN where a resample lacks
    what a figure needs (a class, or any of the subset's rows).

    Cost: the resamples stay as per-patient draws (B, G); a subset's rows read their patient's
    multiplicity from them, so no (B, n) weight matrix is built. The AUROC costs O(B x rows of the
    subset); the confusion counts are summed per patient over the subset's rows first, then
    weighted by the draws of only the patients the subset holds, O(B x its patients).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = np.asarray(groups)
    _check_table(y, groups, p)
    n_labels = y.shape[1]
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (n_labels,):
        raise ValueError(f"thresholds must be ({n_labels},), got {thresholds.shape}")
    per_group, codes = _group_draws(groups, n_bootstrap, seed)
    n_groups = per_group.shape[1]
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, mask in subsets.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (y.shape[0],):
            raise ValueError(f"subset {name!r} must be a ({y.shape[0]},) mask, got {mask.shape}")
        figs = {k: np.full((n_bootstrap, n_labels), np.nan) for k in ("auroc", "tpr", "fpr")}
        for j in range(n_labels):
            keep = np.flatnonzero(mask & ~np.isnan(y[:, j]))
            if keep.size == 0:
                continue
            yj, pj, cj = y[keep, j], _scored(p[keep, j], j), codes[keep]
            total_pos, total_neg, mann_whitney, _ = _rank_sums(yj, pj, per_group, cj, with_ap=False)
            figs["auroc"][:, j] = _auroc(total_pos, total_neg, mann_whitney)
            if np.isnan(thresholds[j]):
                continue
            decision, positive = pj >= thresholds[j], yj == 1
            present = np.unique(cj)
            draws = per_group[:, present].astype(np.float64)
            tp = draws @ np.bincount(cj, weights=decision & positive, minlength=n_groups)[present]
            fp = draws @ np.bincount(cj, weights=decision & ~positive, minlength=n_groups)[present]
            figs["tpr"][:, j] = _ratio(tp, total_pos)
            figs["fpr"][:, j] = _ratio(fp, total_neg)
        out[name] = figs
    return out


def _scored(p: np.ndarray, column: int) -> np.ndarray:
    if not np.isfinite(p).all():
        raise ValueError(f"label column {column}: a scored row has a non-finite probability")
    return p


def paired_delta(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> np.ndarray:
    """(B, L) paired bootstrap of AUROC_a - AUROC_b (model a minus model b), per label.

    Both models are scored on the same rows and, in each resample, on the same drawn patients, so
    the difference keeps the correlation between the two models (they err on the same hard cases)
    and its interval is much narrower than two independent intervals would suggest. Each label uses
    its own non-excluded rows (`y` NaN excluded). NaN where a resample lacks a class.
    `percentile_interval(delta[:, j])` gives the interval of the difference for label j.
    """
    y = np.asarray(y, dtype=np.float64)
    p_a = np.asarray(p_a, dtype=np.float64)
    p_b = np.asarray(p_b, dtype=np.float64)
    groups = np.asarray(groups)
    _check_table(y, groups, p_a, p_b)
    per_group, codes = _group_draws(groups, n_bootstrap, seed)
    out = np.full((n_bootstrap, y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        keep = np.flatnonzero(~np.isnan(y[:, j]))
        if keep.size == 0:
            continue
        aurocs = []
        for p in (p_a, p_b):
            sums = _rank_sums(
                y[keep, j], _scored(p[keep, j], j), per_group, codes[keep], with_ap=False
            )
            aurocs.append(_auroc(*sums[:3]))
        out[:, j] = aurocs[0] - aurocs[1]
    return out

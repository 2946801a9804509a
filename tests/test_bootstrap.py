"""The patient bootstrap: resamples, vectorized figures against scikit-learn, intervals, coverage."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.stats.bootstrap import (
    bootstrap_metrics,
    macro_over,
    paired_delta,
    percentile_interval,
    resample_counts,
    weighted_auroc,
    weighted_average_precision,
    weighted_confusion,
)


def _clustered(n_patients=40, n_labels=3, seed=0):
    """Rows grouped by patient (1-8 rows each, keys arbitrary large ints), targets with NaN."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n_patients)
    keys = rng.choice(np.arange(10_000_000, 20_000_000), n_patients, replace=False)
    groups = rng.permutation(np.repeat(keys, sizes))  # a patient's rows are not contiguous
    n = groups.size
    y = (rng.random((n, n_labels)) < np.linspace(0.2, 0.5, n_labels)).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, n_labels)), 0, 1).round(2)  # ties
    y[rng.random((n, n_labels)) < 0.1] = np.nan
    return y, p, groups


# --------------------------------------------------------------------------- resample_counts


def test_resample_counts_draws_whole_patients():
    _, _, groups = _clustered()
    keys = np.unique(groups)
    counts = resample_counts(groups, 300, seed=3)
    assert counts.shape == (300, groups.size) and counts.dtype == np.int32
    for key in keys:  # every row of a patient carries the patient's multiplicity
        rows = counts[:, groups == key]
        assert (rows == rows[:, :1]).all()
    # each resample draws as many patients as there are (not as many rows)
    one_row_each = counts[:, [np.flatnonzero(groups == k)[0] for k in keys]]
    assert (one_row_each.sum(axis=1) == keys.size).all()
    assert (counts.sum(axis=1) != groups.size).any()  # rows are not what is drawn
    np.testing.assert_array_equal(counts, resample_counts(groups, 300, seed=3))
    assert not np.array_equal(counts, resample_counts(groups, 300, seed=4))


def test_resample_counts_study_groups_and_empty():
    counts = resample_counts(np.arange(50), 100, seed=0)  # each row its own group
    assert (counts.sum(axis=1) == 50).all()
    assert resample_counts(np.array([], dtype=int), 5, seed=0).shape == (5, 0)
    with pytest.raises(ValueError, match="1-D"):
        resample_counts(np.zeros((3, 2)), 5, seed=0)


# --------------------------------------------------------------------------- figures per weighting


@pytest.mark.parametrize("seed", range(6))
def test_weighted_auroc_and_ap_equal_sklearn_on_repeated_rows(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = (rng.random(n) < 0.3).astype(float)
    p = rng.integers(0, 6, n) / 5  # six distinct scores: many ties, across classes
    w = rng.integers(0, 4, (25, n))  # zeros drop rows, as in a resample
    w[0] = 0
    w[0, y == 0] = 1  # a resample without positives
    auroc = weighted_auroc(y, p, w)
    ap = weighted_average_precision(y, p, w)
    assert np.isnan(auroc[0]) and np.isnan(ap[0])
    for b in range(1, w.shape[0]):
        yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
        assert auroc[b] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(yy, pp), abs=1e-12)


def test_weighted_ap_without_negatives_is_one_as_sklearn():
    y = np.array([1, 1, 0.0])
    p = np.array([0.2, 0.7, 0.9])
    w = np.array([[1, 2, 0]])
    assert weighted_average_precision(y, p, w)[0] == average_precision_score(
        [1, 1, 1], [0.2] + [0.7] * 2
    )
    assert np.isnan(weighted_auroc(y, p, w)[0])


def test_weighted_figures_reject_excluded_rows():
    with pytest.raises(ValueError, match="NaN"):
        weighted_auroc(np.array([1, np.nan, 0]), np.array([0.1, 0.2, 0.3]), np.ones((2, 3)))


def test_weighted_confusion_against_direct_count():
    rng = np.random.default_rng(1)
    y = (rng.random(80) < 0.4).astype(float)
    decision = rng.random(80) < 0.5
    w = rng.integers(0, 3, (10, 80))
    tp, fp, fn, tn = weighted_confusion(y, decision, w)
    for b in range(10):
        yy, dd = np.repeat(y, w[b]) == 1, np.repeat(decision, w[b])
        assert (tp[b], fp[b], fn[b], tn[b]) == (
            (dd & yy).sum(),
            (dd & ~yy).sum(),
            (~dd & yy).sum(),
            (~dd & ~yy).sum(),
        )


# --------------------------------------------------------------------------- intervals


def test_percentile_interval_and_its_refusal():
    s = np.linspace(0, 1, 1001)
    assert percentile_interval(s) == pytest.approx([0.025, 0.975])
    assert percentile_interval(s, ci=0.5) == pytest.approx([0.25, 0.75])
    half = s.copy()
    half[:500] = np.nan  # 501 finite of 1001: still an interval, over the finite ones
    assert percentile_interval(half) == pytest.approx(list(np.quantile(s[500:], [0.025, 0.975])))
    half[500] = np.nan  # 500 finite of 1001: fewer than half
    assert percentile_interval(half) is None
    assert percentile_interval(np.full(10, np.nan)) is None


def test_macro_over_is_nan_when_a_label_is():
    s = np.array([[0.5, 0.7, np.nan], [0.6, np.nan, 0.9], [0.8, 0.6, 0.7]])
    np.testing.assert_allclose(macro_over(s, [0, 2]), [np.nan, 0.75, 0.75])
    np.testing.assert_allclose(macro_over(s, [0]), [0.5, 0.6, 0.8])
    np.testing.assert_allclose(macro_over(s, np.array([True, True, False])), [0.6, np.nan, 0.7])


# --------------------------------------------------------------------------- whole tables


def _hand_figures(yj, pj, wj, t):
    """One resample's figures for one label from the rows repeated by their multiplicities."""
    yy, pp = np.repeat(yj, wj), np.repeat(pj, wj)
    pred, pos = pp >= t, yy == 1
    tp, fp = (pred & pos).sum(), (pred & ~pos).sum()
    fn, tn = (~pred & pos).sum(), (~pred & ~pos).sum()
    return {
        "auroc": roc_auc_score(yy, pp),
        "auprc": average_precision_score(yy, pp),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "ppv": tp / (tp + fp),
        "f1": 2 * tp / (2 * tp + fp + fn),
    }


def test_bootstrap_metrics_shares_one_set_of_patient_resamples():
    y, p, groups = _clustered(n_patients=60)
    ops = {"youden": np.array([0.5, 0.55, 0.6]), "spec90": np.array([0.7, 0.75, 0.8])}
    out = bootstrap_metrics(y, p, groups, ops, n_bootstrap=40, seed=11)
    expected_keys = {"auroc", "auprc"} | {
        f"{op}/{fig}" for op in ops for fig in ("sensitivity", "specificity", "ppv", "f1")
    }
    assert set(out) == expected_keys
    assert all(v.shape == (40, 3) for v in out.values())
    counts = resample_counts(groups, 40, seed=11)  # the same seed gives the same resamples
    for b in (0, 17, 39):
        for j in range(3):  # every label is driven by the same counts[b]
            keep = ~np.isnan(y[:, j])
            for op, t in ops.items():
                hand = _hand_figures(y[keep, j], p[keep, j], counts[b, keep], t[j])
                assert out["auroc"][b, j] == pytest.approx(hand["auroc"], abs=1e-12)
                assert out["auprc"][b, j] == pytest.approx(hand["auprc"], abs=1e-12)
                for fig in ("sensitivity", "specificity", "ppv", "f1"):
                    assert out[f"{op}/{fig}"][b, j] == pytest.approx(hand[fig], abs=1e-12)
    other = bootstrap_metrics(y, p, groups, ops, n_bootstrap=40, seed=12)
    assert not np.array_equal(out["auroc"], other["auroc"])


def test_bootstrap_metrics_nan_threshold_and_empty_label():
    y, p, groups = _clustered()
    y[:, 2] = np.nan  # a label excluded everywhere
    ops = {"youden": np.array([0.5, np.nan, 0.5])}
    out = bootstrap_metrics(y, p, groups, ops, n_bootstrap=30, seed=0)
    for fig in ("sensitivity", "specificity", "ppv", "f1"):
        assert np.isnan(out[f"youden/{fig}"][:, 1]).all()
        assert np.isfinite(out[f"youden/{fig}"][:, 0]).any()
    assert np.isfinite(out["auroc"][:, 1]).all()  # the ranking figures do not need a threshold
    assert np.isnan(out["auroc"][:, 2]).all() and np.isnan(out["youden/f1"][:, 2]).all()
    with pytest.raises(ValueError, match="thresholds"):
        bootstrap_metrics(y, p, groups, {"youden": np.zeros(2)}, 5, 0)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_metrics(y, p, groups[:-1], ops, 5, 0)


def test_paired_delta_is_the_difference_on_the_same_resamples():
    y, p_a, groups = _clustered(n_patients=50, seed=2)
    rng = np.random.default_rng(9)
    p_b = np.clip(p_a + rng.normal(0, 0.2, p_a.shape), 0, 1)
    delta = paired_delta(y, p_a, p_b, groups, n_bootstrap=30, seed=5)
    assert delta.shape == (30, 3)
    counts = resample_counts(groups, 30, seed=5)
    for b in (0, 29):
        for j in range(3):
            keep = ~np.isnan(y[:, j])
            yy = np.repeat(y[keep, j], counts[b, keep])
            a = roc_auc_score(yy, np.repeat(p_a[keep, j], counts[b, keep]))
            c = roc_auc_score(yy, np.repeat(p_b[keep, j], counts[b, keep]))
            assert delta[b, j] == pytest.approx(a - c, abs=1e-12)
    # a model against itself (or a monotone transform of itself) differs by exactly 0
    same = paired_delta(y, p_a, p_a**2, groups, n_bootstrap=30, seed=5)
    assert (same == 0).all()


# --------------------------------------------------------------------------- coverage


def _simulate(rng, n_patients):
    """A clustered test set: (targets, scores, patient keys); see the coverage test."""
    sizes = rng.integers(1, 13, n_patients)
    u = np.repeat(rng.normal(0, 1, n_patients), sizes)  # the patient's disposition to the finding
    v = np.repeat(rng.normal(0, 1, n_patients), sizes)  # how the model scores this patient
    y = (1.5 * u + rng.normal(0, 1, u.size) > 1.0).astype(float)
    p = 1.5 * y + 1.0 * v + 0.8 * rng.normal(0, 1, u.size)
    return y, p, np.repeat(np.arange(n_patients), sizes)


def test_patient_intervals_cover_and_study_intervals_do_not():
    """Coverage of 95% percentile intervals of AUROC on simulated clustered test sets.

    Design: each patient has 1-12 studies (uniform) and two random effects shared by all of its
    studies: u, its disposition to the finding (a study is positive when 1.5 u + e > 1, so
    findings persist within a patient; prevalence about 0.3), and v, a patient-level offset of the
    model's score (score = 1.5 y + v + 0.8 e'). The true AUROC is that of 100,000 simulated
    patients (about 650,000 studies; Monte Carlo error about 0.001, against interval widths near
    0.1). 100 test sets of 120 patients (about 780 studies) each get a 95% interval from 200
    resamples of patients and one from 200 resamples of studies, all from the project's own
    functions. Everything is seeded, so the result is the same on every run.

    With this seed: patient-level 0.95, study-level 0.66. Across ten other seeds of the same design,
    patient-level coverage was 0.90-0.96 (the percentile bootstrap under-covers a little with ~120
    clusters) and study-level 0.67-0.80, never closer than 0.15: the asserted bounds (>= 0.85, and
    at least 0.10 apart) hold for every one of them.
    """
    rng = np.random.default_rng(2024)
    y, p, _ = _simulate(rng, 100_000)
    truth = roc_auc_score(y, p)
    n_sets, hits = 100, {"patient": 0, "study": 0}
    for _ in range(n_sets):
        y, p, patients = _simulate(rng, 120)
        for unit, groups in (("patient", patients), ("study", np.arange(y.size))):
            counts = resample_counts(groups, 200, seed=int(rng.integers(2**31)))
            ci = percentile_interval(weighted_auroc(y, p, counts))
            hits[unit] += ci is not None and ci[0] <= truth <= ci[1]
    patient, study = hits["patient"] / n_sets, hits["study"] / n_sets
    assert patient >= 0.85, (patient, study)
    assert study <= patient - 0.10, (patient, study)

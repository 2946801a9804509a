"""Metrics against scikit-learn on hand-made cases; intervals, thresholds, masks, aggregation."""

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from cxr.stats.metrics import (
    MetricsConfig,
    aggregate_studies,
    choose_thresholds,
    compute_metrics,
    eval_targets,
    expected_calibration_error,
    youden_threshold,
)

LABELS = ["A", "B", "C"]


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.5]).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, 3)), 0, 1).round(2)  # rounding makes ties
    y[rng.random((n, 3)) < 0.1] = np.nan
    return y, p


def test_per_label_figures_match_sklearn():
    y, p = _data()
    th = {lab: {"threshold": 0.5, "source": "validate"} for lab in LABELS}
    m = compute_metrics(y, p, LABELS, th, config=MetricsConfig(n_bootstrap=50))
    for j, lab in enumerate(LABELS):
        k = ~np.isnan(y[:, j])
        yj, pj = y[k, j], p[k, j]
        e = m["labels"][lab]
        assert e["auroc"] == pytest.approx(roc_auc_score(yj, pj))
        assert e["auprc"] == pytest.approx(average_precision_score(yj, pj))
        assert e["brier"] == pytest.approx(brier_score_loss(yj, pj))
        assert e["n_pos"] == int((yj == 1).sum()) and e["n_neg"] == int((yj == 0).sum())
        assert e["prevalence"] == pytest.approx(yj.mean())
        pred = pj >= 0.5
        tp = (pred & (yj == 1)).sum()
        assert e["sensitivity"] == pytest.approx(tp / (yj == 1).sum())
        assert e["specificity"] == pytest.approx((~pred & (yj == 0)).sum() / (yj == 0).sum())
        assert e["ppv"] == pytest.approx(tp / pred.sum())
    macro = np.mean([m["labels"][lab]["auroc"] for lab in LABELS])
    assert m["macro"]["auroc"] == pytest.approx(macro)
    k = ~np.isnan(y)
    assert m["micro"]["auroc"] == pytest.approx(roc_auc_score(y.T[k.T], p.T[k.T]))


def test_ece_hand_case():
    # two bins used: [0.0,1/15) holds p=0.05 (y 0,0) ; bin of 0.95 holds (y 1, 0)
    y = np.array([0, 0, 1, 0.0])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    expected = 0.5 * abs(0 - 0.05) + 0.5 * abs(0.5 - 0.95)
    assert expected_calibration_error(y, p, 15) == pytest.approx(expected)


def test_bootstrap_interval_deterministic_and_contains_estimate():
    y, p = _data(600, seed=1)
    groups = np.arange(600) // 2  # two images per study
    th = choose_thresholds(y, p, LABELS)

    def intervals(seed):
        m = compute_metrics(y, p, LABELS, th, groups=groups, config=MetricsConfig(300, seed=seed))
        return m, [m["labels"][lab]["auroc_ci"] for lab in LABELS]

    m, a = intervals(7)
    assert a == intervals(7)[1]
    assert a != intervals(8)[1]
    for lab, (lo, hi) in zip(LABELS, a, strict=True):
        assert lo < m["labels"][lab]["auroc"] < hi


def test_label_without_both_classes_is_null_with_reason():
    y, p = _data()
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)
    m = compute_metrics(y, p, LABELS, choose_thresholds(y, p, LABELS), config=MetricsConfig(20))
    e = m["labels"]["B"]
    assert e["auroc"] is None and e["auroc_ci"] is None and e["reason"] == "no positive rows"
    assert m["macro"]["n_labels"] == 2


def test_threshold_is_youden_on_validate_and_transfers():
    yv = np.array([0, 0, 0, 1, 1, 1.0])
    pv = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    # J at 0.7: sens 2/3, spec 1 -> 0.667; at 0.5: sens 1, spec 2/3 -> 0.667 (tie -> higher, 0.7)
    assert youden_threshold(yv, pv) == pytest.approx(0.7)
    th = choose_thresholds(yv[:, None], pv[:, None], ["A"])
    assert th["A"] == {"threshold": pytest.approx(0.7), "source": "validate"}
    # On test, the validate threshold is used as is (not re-tuned).
    yt = np.array([[0], [1], [1], [0.0]])
    pt = np.array([[0.65], [0.69], [0.71], [0.2]])
    m = compute_metrics(yt, pt, ["A"], th, config=MetricsConfig(0))
    assert m["labels"]["A"]["threshold"] == pytest.approx(0.7)
    assert m["labels"]["A"]["sensitivity"] == 0.5 and m["labels"]["A"]["specificity"] == 1.0
    # Validate lacking positives falls back to 0.5, saying so.
    th2 = choose_thresholds(np.zeros((3, 1)), np.array([[0.1], [0.2], [0.3]]), ["A"])
    assert th2["A"]["threshold"] == 0.5 and "no positive" in th2["A"]["source"]


def test_eval_targets_do_not_depend_on_a_training_policy():
    raw = np.array([[1, 0, -1, np.nan], [np.nan, -1, 0, 1]], dtype=np.float32).T
    y = eval_targets(raw)  # blank negative, uncertain excluded
    np.testing.assert_array_equal(y[:, 0], [1, 0, np.nan, 0])
    np.testing.assert_array_equal(y[:, 1], [0, np.nan, 0, 1])
    y = eval_targets(raw, uncertain="negative")
    np.testing.assert_array_equal(y, [[1, 0], [0, 0], [0, 0], [0, 1]])
    with pytest.raises(ValueError, match="uncertain"):
        eval_targets(raw, uncertain="ones")


def test_aggregate_studies_means_images():
    df = pl.DataFrame(
        {
            "dicom_id": ["a", "b", "c"],
            "study_id": [52, 51, 52],
            "A": [0.2, 0.5, 0.6],
            "B": [1.0, 0.0, 0.0],
        }
    )
    out = aggregate_studies(df, ["A", "B"])
    assert out["study_id"].to_list() == [51, 52]
    assert out["A"].to_list() == pytest.approx([0.5, 0.4])
    assert out["B"].to_list() == pytest.approx([0.0, 0.5])
    assert out["n_images"].to_list() == [1, 2]


def test_ece_matches_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(5)
    p = rng.random(2000) ** 2  # skewed, never exactly on a bin edge
    y = (rng.random(2000) < np.clip(p * 1.3, 0, 1)).astype(float)
    frac_pos, mean_p = calibration_curve(y, p, n_bins=15, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 16))[0]
    weights = counts[counts > 0] / p.size
    expected = float(np.sum(weights * np.abs(frac_pos - mean_p)))
    assert expected_calibration_error(y, p, 15) == pytest.approx(expected)

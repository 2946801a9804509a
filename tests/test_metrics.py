"""Metric building blocks on hand-made cases: targets, calibration, Youden, aggregation."""

import numpy as np
import polars as pl
import pytest

from _scoring_data import noisy_scores
from cxr.stats.metrics import (
    aggregate_studies,
    eval_targets,
    expected_calibration_error,
    youden_threshold,
)

LABELS = ["A", "B", "C"]


_data = noisy_scores


def test_ece_hand_case():
    # two bins used: [0.0,1/15) holds p=0.05 (y 0,0) ; bin of 0.95 holds (y 1, 0)
    y = np.array([0, 0, 1, 0.0])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    expected = 0.5 * abs(0 - 0.05) + 0.5 * abs(0.5 - 0.95)
    assert expected_calibration_error(y, p, 15) == pytest.approx(expected)


def test_youden_threshold_ties_go_to_the_higher_threshold():
    yv = np.array([0, 0, 0, 1, 1, 1.0])
    pv = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    # J at 0.7: sens 2/3, spec 1 -> 0.667; at 0.5: sens 1, spec 2/3 -> 0.667 (tie -> higher, 0.7)
    assert youden_threshold(yv, pv) == pytest.approx(0.7)
    assert youden_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) is None


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

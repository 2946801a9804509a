"""DeLong's test (midrank formulation) against the pairwise O(n^2) definition, and its edge cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr.stats.delong import delong_auc_variance, delong_covariance, delong_test


def _pairwise_delong(y, scores):
    """DeLong et al. (1988) written out pairwise: psi, structural components, S10/m + S01/n."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01 = [], []
    for s in scores:
        x, z = s[pos], s[neg]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # (m, n): 1, 1/2, 0
        v10.append(psi.mean(axis=1))  # for each positive, over the negatives
        v01.append(psi.mean(axis=0))  # for each negative, over the positives
    v10, v01 = np.array(v10), np.array(v01)
    aucs = v10.mean(axis=1)
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


def _tied_data(seed, n=70):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    a = np.round(0.8 * y + rng.normal(0, 0.6, n), 1)  # rounding: ties within and across classes
    b = np.round(0.5 * y + 0.5 * a + rng.normal(0, 0.6, n), 1)
    return y, a, b


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_the_pairwise_definition_with_ties(seed):
    y, a, b = _tied_data(seed)
    aucs, cov = _pairwise_delong(y, [a, b])
    got_aucs, got_cov = delong_covariance(y, np.stack([a, b]))
    np.testing.assert_allclose(got_aucs, aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_cov, cov, rtol=0, atol=1e-12)
    assert got_aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)

    auc, var = delong_auc_variance(y, a)
    assert auc == pytest.approx(aucs[0], abs=1e-12) and var == pytest.approx(cov[0, 0], abs=1e-12)

    t = delong_test(y, a, b)
    var_delta = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var_delta)
    p = 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))
    assert t["auc_a"] == pytest.approx(aucs[0], abs=1e-12)
    assert t["auc_b"] == pytest.approx(aucs[1], abs=1e-12)
    assert t["delta"] == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert t["se"] == pytest.approx(math.sqrt(var_delta), abs=1e-10)
    assert t["z"] == pytest.approx(z, abs=1e-10)
    assert t["p_value"] == pytest.approx(p, abs=1e-10)
    assert 0.0 <= t["p_value"] <= 1.0
    assert (t["n_pos"], t["n_neg"]) == (int((y == 1).sum()), int((y == 0).sum()))


def test_identical_placements_give_p_one():
    y, a, _ = _tied_data(0)
    for other in (a, 3 * a + 1):  # the same scores, and a monotone transform of them
        t = delong_test(y, a, other)
        assert t["delta"] == 0.0 and t["se"] == 0.0
        assert t["z"] == 0.0 and t["p_value"] == 1.0


def test_a_much_better_model_is_significant():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.5).astype(float)
    good = 2.0 * y + rng.normal(0, 1, 300)
    poor = 0.2 * y + rng.normal(0, 1, 300)
    t = delong_test(y, good, poor)
    assert t["delta"] > 0.2 and t["p_value"] < 0.001
    # swapping the models flips the sign, not the p-value
    s = delong_test(y, poor, good)
    assert s["delta"] == pytest.approx(-t["delta"]) and s["p_value"] == pytest.approx(t["p_value"])


def test_missing_class_gives_none_and_nan_rows_are_left_out():
    p = np.array([0.1, 0.4, 0.8])
    assert delong_test(np.zeros(3), p, p[::-1]) is None
    assert delong_auc_variance(np.array([1.0, 1.0, np.nan]), p) is None
    y, a, b = _tied_data(1)
    y_nan = y.copy()
    y_nan[:5] = np.nan
    with_nan = delong_test(y_nan, a, b)
    dropped = delong_test(y[5:], a[5:], b[5:])
    assert with_nan == pytest.approx(dropped)


def test_single_positive_has_an_auc_but_no_variance():
    y = np.array([1, 0, 0, 0.0])
    t = delong_test(y, np.array([0.9, 0.1, 0.5, 0.3]), np.array([0.2, 0.1, 0.5, 0.3]))
    assert t["auc_a"] == 1.0 and t["auc_b"] == pytest.approx(1 / 3)  # 0.2 beats only 0.1
    assert math.isnan(t["se"]) and math.isnan(t["p_value"])
    auc, var = delong_auc_variance(y, np.array([0.9, 0.1, 0.5, 0.3]))
    assert auc == 1.0 and math.isnan(var)

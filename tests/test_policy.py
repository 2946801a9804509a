"""The label policy: every (uncertain, missing, value) combination, overrides, bad policies."""

import itertools

import numpy as np
import pytest

from cxr.core.errors import CxrError
from cxr.mimic.policy import MISSING_CHOICES, UNCERTAIN_CHOICES, LabelPolicy, apply_policy
from cxr.mimic.schema import LABELS

NAN = float("nan")


def expected(value: float, uncertain: str, missing: str) -> tuple[float, float]:
    if value == 1.0:
        return 1.0, 1.0
    if value == 0.0:
        return 0.0, 1.0
    if value == -1.0:
        return {"ignore": (0.0, 0.0), "zeros": (0.0, 1.0), "ones": (1.0, 1.0)}[uncertain]
    return {"zeros": (0.0, 1.0), "ignore": (0.0, 0.0)}[missing]


@pytest.mark.parametrize(
    ("uncertain", "missing"), list(itertools.product(UNCERTAIN_CHOICES, MISSING_CHOICES))
)
def test_every_value_under_every_global_policy(uncertain, missing):
    values = np.array([[1.0], [0.0], [-1.0], [NAN]], dtype=np.float32)
    targets, mask = apply_policy(values, ["Edema"], LabelPolicy(uncertain, missing))
    assert targets.dtype == np.float32 and mask.dtype == np.float32
    for i, v in enumerate(values[:, 0]):
        assert (targets[i, 0], mask[i, 0]) == expected(v, uncertain, missing)
    assert np.isfinite(targets).all()


def test_overrides_apply_to_their_label_only():
    policy = LabelPolicy(
        uncertain="ignore",
        missing="zeros",
        overrides={"Atelectasis": {"uncertain": "ones"}, "Edema": {"missing": "ignore"}},
    )
    labels = np.array([[-1.0, -1.0, NAN], [NAN, NAN, NAN]], dtype=np.float32)
    targets, mask = apply_policy(labels, ["Atelectasis", "Edema", "Fracture"], policy)
    np.testing.assert_array_equal(targets, [[1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 0, 1], [1, 0, 1]])
    assert policy.rule_for("Atelectasis") == ("ones", "zeros")
    assert policy.rule_for("Edema") == ("ignore", "ignore")


def test_no_finding_blank_is_negative_under_missing_zeros_and_masked_under_ignore():
    labels = np.array([[1.0], [NAN], [NAN]], dtype=np.float32)
    t, m = apply_policy(labels, ["No Finding"], LabelPolicy(missing="zeros"))
    assert t[:, 0].tolist() == [1, 0, 0] and m[:, 0].tolist() == [1, 1, 1]
    t, m = apply_policy(labels, ["No Finding"], LabelPolicy(missing="ignore"))
    assert m[:, 0].tolist() == [1, 0, 0]  # positives only: no AUROC for it, as documented


def test_full_width_matrix_matches_elementwise_rule():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([1, 0, -1, NAN], dtype=np.float32), size=(200, len(LABELS)))
    policy = LabelPolicy("zeros", "ignore", {"Edema": {"uncertain": "ones", "missing": "zeros"}})
    targets, mask = apply_policy(labels, LABELS, policy)
    for (i, j), v in np.ndenumerate(labels):
        u, m = policy.rule_for(LABELS[j])
        assert (targets[i, j], mask[i, j]) == expected(v, u, m)


def test_round_trip_dict():
    policy = LabelPolicy("ones", "ignore", {"Edema": {"uncertain": "zeros"}})
    assert LabelPolicy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uncertain": "maybe"},
        {"missing": "ones"},
        {"overrides": {"Edema": {"uncertain": "sometimes"}}},
        {"overrides": {"Edema": {"colour": "ones"}}},
        {"overrides": {"Edema": "ones"}},
    ],
)
def test_bad_policies_are_clear_errors(kwargs):
    with pytest.raises(CxrError, match="label policy"):
        LabelPolicy(**kwargs)


def test_bad_inputs():
    with pytest.raises(CxrError, match="unknown labels"):
        apply_policy(np.zeros((1, 1)), ["Edema"], LabelPolicy(overrides={"Edemaa": {}}))
    with pytest.raises(CxrError, match="values other than"):
        apply_policy(np.array([[2.0]]), ["Edema"], LabelPolicy())
    with pytest.raises(CxrError, match="shape"):
        apply_policy(np.zeros((3, 2)), ["Edema"], LabelPolicy())


def test_no_finding_and_support_devices_stay_independent():
    # MIMIC: Support Devices = 1 may coexist with No Finding = 1; no rule couples the labels
    # (a "No Finding zeroes everything" rule would wrongly zero Support Devices).
    names = ["No Finding", "Support Devices", "Edema"]
    labels = np.array([[1.0, 1.0, NAN], [NAN, -1.0, 1.0]], dtype=np.float32)
    for uncertain, missing in itertools.product(UNCERTAIN_CHOICES, MISSING_CHOICES):
        t, m = apply_policy(labels, names, LabelPolicy(uncertain, missing))
        assert t[0, :2].tolist() == [1.0, 1.0] and m[0, :2].tolist() == [1.0, 1.0]
        assert (t[1, 1], m[1, 1]) == expected(-1.0, uncertain, missing)

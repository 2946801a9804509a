"""Subgroup figures: equal to the overall figures computed on the subgroup's rows, intervals from
the shared patient resamples, suppression of small cells, underdiagnosis, gaps."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cxr.core.errors import CxrError
from cxr.evaluation.scoring import ScoringConfig, score
from cxr.evaluation.subgroup_report import subgroup_lines
from cxr.evaluation.subgroups import (
    parse_attributes,
    resolve_attributes,
    score_subgroups,
    unit_attributes,
)
from cxr.stats.bootstrap import (
    bootstrap_metrics,
    bootstrap_subsets,
    percentile_interval,
    resample_counts,
    weighted_auroc,
    weighted_confusion,
)

LABELS = ["Edema", "Pleural Effusion", "No Finding"]


def _table(seed: int = 0, n_patients: int = 90):
    """Units of patients with 1-5 studies, a per-patient sex (60 F, 30 M, 3 Unknown patients:
    a small cell) and a per-study insurance, a model weaker on women for Pleural Effusion."""
    rng = np.random.default_rng(seed)
    groups, sex, insurance = [], [], []
    for k in range(n_patients):
        s = "Female" if k % 3 else "Male"
        if k < 3:
            s = "Unknown"
        for _ in range(int(rng.integers(1, 6))):
            groups.append(1000 + k)
            sex.append(s)
            insurance.append(str(rng.choice(["Medicare", "Medicaid", "Private"])))
    n = len(groups)
    y = (rng.random((n, len(LABELS))) < 0.3).astype(float)
    y[:, 2] = (y[:, :2].sum(1) == 0).astype(float)  # No Finding: no other finding
    y[rng.random(n) < 0.1, 0] = np.nan  # uncertain Edema, excluded
    signal = np.where(np.array(sex)[:, None] == "Female", [1.0, 0.3, 1.0], [1.0, 1.0, 1.0])
    p = 1 / (1 + np.exp(-(2.5 * signal * (y * 2 - 1) + rng.normal(0, 1, y.shape))))
    p = np.nan_to_num(p, nan=0.5)
    attributes = {"sex": np.array(sex), "insurance": np.array(insurance)}
    studies = np.arange(n) + 50000000
    return y, p, np.array(groups), studies, attributes


def _thresholds():
    return {"Edema": 0.5, "Pleural Effusion": 0.45, "No Finding": 0.55}


def test_subgroup_metrics_equal_the_overall_metrics_on_the_subgroups_rows():
    y, p, groups, studies, attributes = _table()
    subgroups, _ = score_subgroups(
        y, p, LABELS, _thresholds(), groups, studies, attributes, min_cell=5, n_bootstrap=0
    )
    ops = {
        lab: {
            op: {"threshold": _thresholds()[lab], "source": "validate"}
            for op in ("youden", "spec90", "spec95")
        }
        for lab in LABELS
    }
    for attribute, values in attributes.items():
        for value, entry in subgroups[attribute].items():
            if entry["suppressed"]:
                continue
            rows = values == value
            overall = score(
                y[rows], p[rows], LABELS, ops, groups[rows], studies[rows], ScoringConfig(0)
            )
            assert entry["patients"] == np.unique(groups[rows]).size
            assert entry["studies"] == rows.sum()
            for label in LABELS:
                want, got = overall["labels"][label], entry["labels"][label]
                assert got["auroc"] == pytest.approx(want["auroc"]), (value, label)
                assert got["tpr"] == pytest.approx(want["sensitivity"]), (value, label)
                assert got["fpr"] == pytest.approx(1 - want["specificity"]), (value, label)
            nf = overall["labels"]["No Finding"]
            assert entry["underdiagnosis"]["rate"] == pytest.approx(1 - nf["specificity"])
            # underdiagnosis: studies with a finding called No Finding
            finding = rows & (y[:, 2] == 0)
            called = finding & (p[:, 2] >= _thresholds()["No Finding"])
            assert entry["underdiagnosis"]["rate"] == pytest.approx(called.sum() / finding.sum())


def test_subgroup_intervals_are_the_subgroups_rows_of_the_shared_resamples():
    y, p, groups, studies, attributes = _table(seed=1)
    subgroups, gaps = score_subgroups(
        y,
        p,
        LABELS,
        _thresholds(),
        groups,
        studies,
        attributes,
        min_cell=5,
        n_bootstrap=300,
        seed=7,
    )
    weights = resample_counts(groups, 300, 7)  # the resamples bootstrap_metrics draws too
    rows = attributes["sex"] == "Female"
    for j, label in enumerate(LABELS):
        keep = rows & ~np.isnan(y[:, j])
        want = percentile_interval(weighted_auroc(y[keep, j], p[keep, j], weights[:, keep]))
        assert subgroups["sex"]["Female"]["labels"][label]["auroc_ci"] == pytest.approx(want)
    keep = rows & ~np.isnan(y[:, 2])
    _, fp, _, tn = weighted_confusion(y[keep, 2], p[keep, 2] >= 0.55, weights[:, keep])
    want = percentile_interval(fp / (fp + tn))
    assert subgroups["sex"]["Female"]["underdiagnosis"]["ci"] == pytest.approx(want)
    # the gap's interval: the two subgroups' figures resample by resample
    gap = gaps["sex"]["auroc"]["Pleural Effusion"]
    assert (gap["higher"], gap["lower"]) == ("Male", "Female")
    male = attributes["sex"] == "Male"
    j = LABELS.index("Pleural Effusion")
    a = weighted_auroc(y[male, j], p[male, j], weights[:, male])
    b = weighted_auroc(y[rows, j], p[rows, j], weights[:, rows])
    assert gap["ci"] == pytest.approx(percentile_interval(a - b))
    assert gap["gap"] == pytest.approx(
        subgroups["sex"]["Male"]["labels"]["Pleural Effusion"]["auroc"]
        - subgroups["sex"]["Female"]["labels"]["Pleural Effusion"]["auroc"]
    )
    assert gap["ci"][0] > 0  # the planted weakness is found


def test_bootstrap_subsets_of_all_rows_are_the_overall_resamples():
    y, p, groups, _, _ = _table(seed=2)
    t = np.array([0.5, 0.45, np.nan])
    sub = bootstrap_subsets(y, p, groups, {"all": np.ones(len(groups), bool)}, t, 200, 3)["all"]
    full = bootstrap_metrics(y, p, groups, {"youden": t}, 200, 3)
    np.testing.assert_allclose(sub["auroc"], full["auroc"], equal_nan=True)
    np.testing.assert_allclose(sub["tpr"], full["youden/sensitivity"], equal_nan=True)
    np.testing.assert_allclose(sub["fpr"], 1 - full["youden/specificity"], equal_nan=True)
    assert np.isnan(sub["tpr"][:, 2]).all()  # no threshold, no TPR


def test_cells_under_min_cell_are_suppressed_with_no_figures():
    y, p, groups, studies, attributes = _table(seed=3)
    subgroups, gaps = score_subgroups(
        y, p, LABELS, _thresholds(), groups, studies, attributes, min_cell=20, n_bootstrap=50
    )
    unknown = subgroups["sex"]["Unknown"]  # 3 patients
    assert unknown == {
        "patients": None,
        "studies": None,
        "suppressed": True,
        "underdiagnosis": None,
        "labels": None,
    }
    assert subgroups["sex"]["Male"]["patients"] == 29 and not subgroups["sex"]["Male"]["suppressed"]
    # a suppressed cell plays no part in the gaps
    for gap in [gaps["sex"]["underdiagnosis"], *gaps["sex"]["auroc"].values()]:
        assert "Unknown" not in (gap["higher"], gap["lower"])
    # raising the minimum suppresses everything, and then there is no gap at all
    everything, none = score_subgroups(
        y, p, LABELS, _thresholds(), groups, studies, attributes, min_cell=1000, n_bootstrap=50
    )
    assert all(e["suppressed"] for v in everything.values() for e in v.values())
    assert none["sex"] == {"underdiagnosis": None, "auroc": {}}
    lines = subgroup_lines(
        {"subgroups": everything, "subgroup_gaps": none, "subgroup_options": {"min_cell": 1000}}
    )
    assert all("suppressed" in ln for ln in lines[1:] if ln.startswith("  "))
    with pytest.raises(CxrError):
        score_subgroups(y, p, LABELS, _thresholds(), groups, studies, attributes, min_cell=0)


def test_order_of_values_and_printed_lines():
    y, p, groups, studies, attributes = _table(seed=4)
    subgroups, gaps = score_subgroups(
        y, p, LABELS, _thresholds(), groups, studies, attributes, min_cell=5, n_bootstrap=50
    )
    assert list(subgroups["sex"]) == ["Female", "Male", "Unknown"]
    assert list(subgroups["insurance"]) == ["Medicaid", "Medicare", "Private"]
    metrics = {
        "subgroups": subgroups,
        "subgroup_gaps": gaps,
        "subgroup_options": {"min_cell": 5},
    }
    text = "\n".join(subgroup_lines(metrics))
    assert "Unknown" in text and "suppressed (fewer than 5 patients)" in text
    assert "largest gaps: underdiagnosis" in text


def test_attributes_per_unit_at_study_and_image_level():
    rows = pl.DataFrame(
        {
            "study_id": [1, 1, 2, 3],
            "dicom_id": ["a", "b", "c", "d"],
            "view_position": ["PA", "AP", "PA", None],
            "sex": ["Female", "Female", None, "Male"],
        }
    )
    units = pl.DataFrame({"study_id": [1, 2, 3]})
    got = unit_attributes(rows, units, "study", ["view_position", "sex"])
    assert got["view_position"].tolist() == ["AP+PA", "PA", "Unknown"]
    assert got["sex"].tolist() == ["Female", "Unknown", "Male"]
    images = rows.select("study_id", "dicom_id").reverse()
    got = unit_attributes(rows, images, "image", ["view_position"])
    assert got["view_position"].tolist() == ["Unknown", "PA", "AP", "PA"]


def test_attribute_names_are_checked():
    assert parse_attributes("sex, age_group") == ("sex", "age_group")
    assert parse_attributes("") == ()
    assert resolve_attributes(parse_attributes("all"), ["sex", "view_position"]) == (
        "sex",
        "view_position",
    )
    with pytest.raises(CxrError, match="unknown attribute 'gender'"):
        parse_attributes("sex,gender")


def test_figures_draw_a_point_outside_its_interval():
    """A tiny subgroup's percentile interval need not contain its point estimate; the figures
    still draw (an interval is not errors around the point)."""
    from cxr.evaluation.subgroup_report import forest_plot, underdiagnosis_chart

    entry = {
        "patients": 4,
        "studies": 9,
        "suppressed": False,
        "underdiagnosis": {"rate": 0.5, "ci": [0.0, 0.3]},
        "labels": {"Edema": {"auroc": 0.9, "auroc_ci": [0.5, 0.8], "tpr": 1.0, "fpr": 0.0}},
    }
    values = {
        "A": entry,
        "B": {**entry, "labels": {"Edema": dict.fromkeys(entry["labels"]["Edema"])}},
    }
    assert forest_plot("sex", values, ["Edema"], 1).startswith(b"\x89PNG")
    assert underdiagnosis_chart({"sex": values}, 1).startswith(b"\x89PNG")

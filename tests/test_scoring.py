"""The evaluation table (`cxr.evaluation.scoring`) against scikit-learn and hand-made cases:
per-label figures, operating points chosen on validate, intervals, rare labels, macro and micro."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from _scoring_data import noisy_scores
from cxr.evaluation.scoring import (
    ScoringConfig,
    choose_operating_points,
    point_figures,
    score,
    threshold_at_specificity,
)

LABELS = ["A", "B", "C"]


_data = noisy_scores


def _fixed(t: float) -> dict:
    return {
        lab: {op: {"threshold": t, "source": "validate"} for op in ("youden", "spec90", "spec95")}
        for lab in LABELS
    }


def test_per_label_figures_match_sklearn():
    y, p = _data()
    studies = np.arange(len(y))
    m = score(
        y,
        p,
        LABELS,
        _fixed(0.5),
        groups=studies // 3,
        studies=studies,
        config=ScoringConfig(n_bootstrap=50, min_positives=1),
    )
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
        tp = int((pred & (yj == 1)).sum())
        fp = int((pred & (yj == 0)).sum())
        assert (e["tp"], e["fp"]) == (tp, fp)
        assert e["fn"] == e["n_pos"] - tp and e["tn"] == e["n_neg"] - fp
        assert e["sensitivity"] == pytest.approx(tp / (yj == 1).sum())
        assert e["specificity"] == pytest.approx((~pred & (yj == 0)).sum() / (yj == 0).sum())
        assert e["ppv"] == pytest.approx(tp / pred.sum())
        assert e["f1"] == pytest.approx(2 * tp / (2 * tp + fp + e["fn"]))
        for key in ("auroc", "auprc", "sensitivity", "specificity"):
            lo, hi = e[f"{key}_ci"]
            assert lo <= e[key] <= hi, (lab, key)
    macro = np.mean([m["labels"][lab]["auroc"] for lab in LABELS])
    assert m["macro"]["auroc"] == pytest.approx(macro) and m["macro"]["n_labels"] == 3
    k = ~np.isnan(y)
    assert m["micro"]["auroc"] == pytest.approx(roc_auc_score(y.T[k.T], p.T[k.T]))


def test_intervals_are_seeded_and_shared_by_the_macro():
    y, p = _data(600, seed=1)
    studies = np.arange(600)
    ops = choose_operating_points(y, p, LABELS)

    def run(seed):
        return score(
            y,
            p,
            LABELS,
            ops,
            groups=studies // 6,
            studies=studies,
            config=ScoringConfig(n_bootstrap=300, seed=seed, min_positives=1),
        )

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a["labels"]["A"]["auroc_ci"] != c["labels"]["A"]["auroc_ci"]
    lo, hi = a["macro"]["auroc_ci"]
    assert lo < a["macro"]["auroc"] < hi
    # Fewer patients (same rows): wider intervals.
    fewer = score(
        y,
        p,
        LABELS,
        ops,
        groups=studies // 60,
        studies=studies,
        config=ScoringConfig(n_bootstrap=300, seed=7, min_positives=1),
    )
    width = lambda m: m["macro"]["auroc_ci"][1] - m["macro"]["auroc_ci"][0]  # noqa: E731
    assert width(fewer) > width(a)


def test_threshold_at_specificity_is_the_most_sensitive_admissible_point():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1).round(3)
    for target in (0.9, 0.95):
        t = threshold_at_specificity(y, p, target)
        spec = ((p < t) & (y == 0)).sum() / (y == 0).sum()
        sens = ((p >= t) & (y == 1)).sum() / (y == 1).sum()
        assert spec >= target
        # No threshold with specificity >= target is more sensitive (checked on every ROC point).
        fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
        assert sens == pytest.approx(tpr[fpr <= 1 - target].max())
    assert threshold_at_specificity(np.zeros(4), np.arange(4.0), 0.9) is None


def test_operating_points_come_from_validate_and_transfer_unchanged():
    yv = np.array([0, 0, 0, 1, 1, 1.0])[:, None]
    pv = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])[:, None]
    ops = choose_operating_points(yv, pv, ["A"])
    assert ops["A"]["youden"] == {"threshold": pytest.approx(0.7), "source": "validate"}
    assert ops["A"]["spec90"]["threshold"] == pytest.approx(0.7)  # spec 1 with sens 2/3
    yt = np.array([[0], [1], [1], [0.0]])
    pt = np.array([[0.65], [0.69], [0.71], [0.2]])
    m = score(yt, pt, ["A"], ops, groups=None, studies=np.arange(4), config=ScoringConfig(0))
    e = m["labels"]["A"]
    assert e["threshold"] == pytest.approx(0.7)
    assert e["sensitivity"] == 0.5 and e["specificity"] == 1.0
    assert e["operating_points"]["spec90"]["tp"] == 1
    # Validate lacking positives: Youden falls back to 0.5 and says so; no specificity points.
    ops2 = choose_operating_points(np.zeros((3, 1)), np.array([[0.1], [0.2], [0.3]]), ["A"])
    assert (
        ops2["A"]["youden"]["threshold"] == 0.5 and "no positive" in ops2["A"]["youden"]["source"]
    )
    assert ops2["A"]["spec95"]["threshold"] is None
    m2 = score(yt, pt, ["A"], ops2, groups=None, studies=np.arange(4), config=ScoringConfig(0))
    assert m2["labels"]["A"]["operating_points"]["spec95"]["sensitivity"] is None
    assert point_figures(yt, pt, ["A"], ops)["A"]["sensitivity"] == 0.5


def test_rare_labels_are_flagged_and_left_out_of_the_macro():
    y, p = _data()
    studies = np.arange(len(y)) // 2  # two rows per study: positives are counted as studies
    m = score(
        y,
        p,
        LABELS,
        _fixed(0.5),
        groups=studies,
        studies=studies,
        config=ScoringConfig(n_bootstrap=0, min_positives=25),
    )
    pos_studies = {lab: len(set(studies[y[:, j] == 1])) for j, lab in enumerate(LABELS)}
    rare = {lab for lab, n in pos_studies.items() if n < 25}
    assert rare == {"B"}
    assert m["labels"]["B"]["n_pos_studies"] == pos_studies["B"]
    assert "fewer than 25" in m["labels"]["B"]["excluded_from_macro"]
    assert m["labels"]["B"]["auroc"] is not None  # still shown
    assert m["macro"]["labels"] == ["A", "C"] and list(m["macro"]["left_out"]) == ["B"]
    assert m["macro"]["auroc"] == pytest.approx(
        np.mean([m["labels"]["A"]["auroc"], m["labels"]["C"]["auroc"]])
    )


def test_label_without_both_classes_is_null_with_reason():
    y, p = _data()
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)
    studies = np.arange(len(y))
    m = score(
        y,
        p,
        LABELS,
        choose_operating_points(y, p, LABELS),
        groups=studies,
        studies=studies,
        config=ScoringConfig(20, min_positives=1),
    )
    e = m["labels"]["B"]
    assert e["auroc"] is None and e["auroc_ci"] is None and e["reason"] == "no positive rows"
    assert m["macro"]["n_labels"] == 2 and m["macro"]["left_out"] == {"B": "no positive rows"}

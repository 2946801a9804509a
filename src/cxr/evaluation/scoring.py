"""Per-label figures, operating points and patient-bootstrap intervals: pure functions over arrays.

Conventions: `y` is (n, L) evaluation targets (1, 0, NaN where the protocol excludes the row for
that label), `p` the (n, L) probabilities, `groups` the (n,) patient of each row (held in memory
only: it never reaches the returned dict), `studies` the (n,) study of each row (at study level
the row is the study). Every interval comes from ONE set of bootstrap resamples of patients shared
by all labels, operating points and the macro averages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.core.jsonsafe import json_safe
from cxr.stats.bootstrap import bootstrap_metrics, macro_over, percentile_interval
from cxr.stats.metrics import expected_calibration_error, one_class_reason, youden_threshold

# Operating points, each chosen per label on the validate split and applied unchanged.
OPERATING_POINTS: dict[str, str] = {
    "youden": "maximum Youden's J (sensitivity + specificity - 1), ties to the higher threshold",
    "spec90": "the highest sensitivity with specificity >= 0.90",
    "spec95": "the highest sensitivity with specificity >= 0.95",
}
_TARGET_SPECIFICITY = {"spec90": 0.90, "spec95": 0.95}
DEFAULT_THRESHOLD = 0.5
OP_FIGURES = ("sensitivity", "specificity", "ppv", "f1")
AVERAGED = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "f1", "ece", "brier")


@dataclass(frozen=True)
class ScoringConfig:
    n_bootstrap: int = 1000
    seed: int = 0
    ci: float = 0.95
    ece_bins: int = 15
    min_positives: int = 10  # positive studies a label needs to enter the macro averages


def threshold_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float | None:
    """The threshold giving the highest sensitivity among those with specificity >= `specificity`
    on (y, p) (positive when p >= threshold); None without both classes."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y)
    if one_class_reason(y) is not None:
        return None
    fpr, _, thr = roc_curve(y, p, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= 1.0 - specificity + 1e-12)
    # fpr and tpr grow as the threshold falls: the last admissible point has the most sensitivity.
    # Index 0 is roc_curve's +inf threshold (nothing positive), always admissible.
    i = int(ok[-1])
    return float(thr[i]) if np.isfinite(thr[i]) else float(np.nextafter(p.max(), np.inf))


def choose_operating_points(
    y_val: np.ndarray, p_val: np.ndarray, labels: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """`{label: {op: {"threshold", "source"}}}` chosen on the validate split's targets."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for j, label in enumerate(labels):
        keep = ~np.isnan(y_val[:, j])
        yj, pj = y_val[keep, j], p_val[keep, j]
        reason = one_class_reason(yj)
        ops = {}
        for op in OPERATING_POINTS:
            if reason is not None:
                ops[op] = {"threshold": None, "source": f"none ({reason} in validate)"}
                continue
            t = (
                youden_threshold(yj, pj)
                if op == "youden"
                else threshold_at_specificity(yj, pj, _TARGET_SPECIFICITY[op])
            )
            ops[op] = {"threshold": t, "source": "validate"}
        if reason is not None:  # Youden falls back to 0.5 so every label has a decision rule
            ops["youden"] = {
                "threshold": DEFAULT_THRESHOLD,
                "source": f"default ({reason} in validate)",
            }
        out[label] = ops
    return out


def _counts(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, int]:
    pred, pos = p >= t, y == 1
    return {
        "tp": int((pred & pos).sum()),
        "fp": int((pred & ~pos).sum()),
        "fn": int((~pred & pos).sum()),
        "tn": int((~pred & ~pos).sum()),
    }


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _figures(c: Mapping[str, int]) -> dict[str, float | None]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def score(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    operating_points: Mapping[str, Mapping[str, Mapping[str, Any]]],
    groups: np.ndarray | None,
    studies: np.ndarray,
    config: ScoringConfig = ScoringConfig(),
) -> dict[str, Any]:
    """Every figure of the evaluated split, JSON-ready.

    Returns `{"labels": {label: {...}}, "macro": {...}, "micro": {...}}`. Each label has its counts,
    AUROC and AUPRC with intervals, calibration, and per operating point (chosen on validate) its
    threshold, TP/FP/FN/TN and sensitivity, specificity, PPV and F1 with intervals; the Youden
    point's figures are also at the label's top level. A label with fewer than
    `config.min_positives` positive studies is shown, flagged in `excluded_from_macro`, and left out
    of the macro averages, which say over which labels they run.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    labels = list(labels)
    if y.shape != p.shape or y.shape[1] != len(labels):
        raise ValueError(f"targets {y.shape} and probabilities {p.shape} vs {len(labels)} labels")
    studies = np.asarray(studies)
    thresholds = {
        op: np.array(
            [
                np.nan
                if operating_points[lab][op]["threshold"] is None
                else operating_points[lab][op]["threshold"]
                for lab in labels
            ],
            dtype=np.float64,
        )
        for op in OPERATING_POINTS
    }
    boot = None
    if config.n_bootstrap and groups is not None:
        boot = bootstrap_metrics(y, p, groups, thresholds, config.n_bootstrap, config.seed)

    def interval(key: str, j: int):
        return None if boot is None else percentile_interval(boot[key][:, j], config.ci)

    per_label: dict[str, dict[str, Any]] = {}
    in_macro: list[int] = []
    for j, label in enumerate(labels):
        keep = ~np.isnan(y[:, j])
        yj, pj = y[keep, j], p[keep, j]
        n_pos, n_neg = int((yj == 1).sum()), int((yj == 0).sum())
        pos_studies = int(np.unique(studies[keep][yj == 1]).size)
        entry: dict[str, Any] = {
            "n_pos": n_pos,
            "n_neg": n_neg,
            "n_pos_studies": pos_studies,
            "prevalence": n_pos / (n_pos + n_neg) if n_pos + n_neg else None,
            "auroc": None,
            "auroc_ci": None,
            "auprc": None,
            "auprc_ci": None,
            "ece": None,
            "brier": None,
        }
        reason = one_class_reason(yj)
        if reason is None:
            entry["auroc"] = float(roc_auc_score(yj, pj))
            entry["auroc_ci"] = interval("auroc", j)
            entry["auprc"] = float(average_precision_score(yj, pj))
            entry["auprc_ci"] = interval("auprc", j)
            entry["ece"] = expected_calibration_error(yj, pj, config.ece_bins)
            entry["brier"] = float(np.mean((pj - yj) ** 2))
        ops: dict[str, dict[str, Any]] = {}
        for op in OPERATING_POINTS:
            chosen = operating_points[label][op]
            t = chosen["threshold"]
            point: dict[str, Any] = {"threshold": t, "source": chosen["source"]}
            if t is not None and n_pos + n_neg:
                counts = _counts(yj, pj, t)
                point.update(counts)
                for name, value in _figures(counts).items():
                    point[name] = value
                    point[f"{name}_ci"] = interval(f"{op}/{name}", j)
            else:
                point.update(dict.fromkeys(("tp", "fp", "fn", "tn")))
                for name in OP_FIGURES:
                    point[name] = point[f"{name}_ci"] = None
            ops[op] = point
        entry["operating_points"] = ops
        youden = ops["youden"]
        entry["threshold"] = youden["threshold"]
        entry["threshold_source"] = youden["source"]
        for key in ("tp", "fp", "fn", "tn", *OP_FIGURES, *(f"{n}_ci" for n in OP_FIGURES)):
            entry[key] = youden[key]
        entry["sensitivity_at_spec90"] = ops["spec90"]["sensitivity"]
        entry["sensitivity_at_spec95"] = ops["spec95"]["sensitivity"]
        if reason is not None:
            entry["reason"] = reason
            entry["excluded_from_macro"] = reason
        elif pos_studies < config.min_positives:
            entry["excluded_from_macro"] = (
                f"{pos_studies} positive studies (fewer than {config.min_positives})"
            )
        else:
            in_macro.append(j)
        per_label[label] = entry

    macro: dict[str, Any] = {
        "n_labels": len(in_macro),
        "labels": [labels[j] for j in in_macro],
        "left_out": {
            labels[j]: per_label[labels[j]]["excluded_from_macro"]
            for j in range(len(labels))
            if j not in in_macro
        },
    }
    for key in AVERAGED:
        vals = [per_label[labels[j]][key] for j in in_macro]
        vals = [v for v in vals if v is not None]
        macro[key] = float(np.mean(vals)) if vals else None
    for key in ("auroc", "auprc"):
        macro[f"{key}_ci"] = (
            percentile_interval(macro_over(boot[key], in_macro), config.ci)
            if boot is not None and in_macro
            else None
        )

    micro: dict[str, Any] = dict.fromkeys(AVERAGED)
    micro["n_labels"] = len(in_macro)
    if in_macro:
        ys, ps, decisions = [], [], []
        for j in in_macro:
            keep = ~np.isnan(y[:, j])
            ys.append(y[keep, j])
            ps.append(p[keep, j])
            decisions.append(p[keep, j] >= per_label[labels[j]]["threshold"])
        yy, pp, dd = np.concatenate(ys), np.concatenate(ps), np.concatenate(decisions)
        micro["auroc"] = float(roc_auc_score(yy, pp))
        micro["auprc"] = float(average_precision_score(yy, pp))
        pos = yy == 1
        micro.update(
            _figures(
                {
                    "tp": int((dd & pos).sum()),
                    "fp": int((dd & ~pos).sum()),
                    "fn": int((~dd & pos).sum()),
                    "tn": int((~dd & ~pos).sum()),
                }
            )
        )
        micro["ece"] = expected_calibration_error(yy, pp, config.ece_bins)
        micro["brier"] = float(np.mean((pp - yy) ** 2))
    return json_safe({"labels": per_label, "macro": macro, "micro": micro})


def point_figures(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    operating_points: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, Any]:
    """The validate split's own figures (no intervals), shown beside the evaluated split's."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    out: dict[str, Any] = {}
    for j, label in enumerate(labels):
        keep = ~np.isnan(y[:, j])
        yj, pj = y[keep, j], p[keep, j]
        entry: dict[str, Any] = {"n_pos": int((yj == 1).sum()), "n_neg": int((yj == 0).sum())}
        if one_class_reason(yj) is None:
            entry["auroc"] = float(roc_auc_score(yj, pj))
            entry["auprc"] = float(average_precision_score(yj, pj))
        else:
            entry["auroc"] = entry["auprc"] = None
        t = operating_points[label]["youden"]["threshold"]
        entry.update(_figures(_counts(yj, pj, t)) if yj.size else dict.fromkeys(OP_FIGURES))
        out[label] = entry
    return json_safe(out)

"""`cxr compare`: two or more evaluations of the same rows, label by label and on the macro AUROC.

Evaluations are comparable on a label exactly when their protocols are equal and the label's rows
fingerprints match (the same units with the same targets). For each such label the difference in
AUROC gets a paired patient-bootstrap 95% interval (the same patient resamples score both models)
and DeLong's test for correlated ROC curves; the macro difference is the mean over the labels both
evaluations averaged, with its interval from the same resamples.

The targets and patients are rebuilt in memory from the manifest and the protocol, and checked
against the recorded fingerprints, so a changed manifest cannot slip into a comparison.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxr.core.errors import InputError
from cxr.core.jsonsafe import json_safe
from cxr.evaluation.evaluate import Evaluation, read_evaluation
from cxr.evaluation.protocol import label_fingerprint, rows_fingerprint
from cxr.evaluation.targets import (
    load_radiologist_table,
    raw_dir_of,
    targets,
    unit_keys,
    unit_rows,
)
from cxr.stats.bootstrap import paired_delta, percentile_interval
from cxr.stats.delong import delong_test

COMPARE_JSON = "compare.json"
DELONG_NOTE = (
    "DeLong's test treats the units as independent; with several studies per patient its p-value "
    "is too small (in simulation it called equal models different at the 5% level far more often "
    "than 5%). Judge a difference by its paired patient-bootstrap interval."
)


@dataclass(frozen=True)
class CompareConfig:
    dirs: tuple[Path, ...]
    out: Path | None = None  # default: the first directory's parent / compare-<a>-vs-<b>
    manifest: Path | None = None  # default: the manifest the first evaluation recorded
    n_bootstrap: int = 1000
    seed: int = 0
    ci: float = 0.95
    data_root: Path = Path("data")

    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        names = "-vs-".join(Path(d).resolve().name for d in self.dirs[:2])
        return Path(self.dirs[0]).resolve().parent / f"compare-{names}"


def _manifest_path(cfg: CompareConfig, first: Evaluation) -> Path:
    from cxr.core.paths import DataPaths

    if cfg.manifest is not None:
        return Path(cfg.manifest)
    recorded = (first.metrics.get("provenance") or {}).get("manifest")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    return DataPaths(cfg.data_root).manifest


def _rebuild_targets(ev: Evaluation, manifest: pl.DataFrame, radiologist, name: str):
    """(y, groups) for the evaluation's units, from the manifest under its protocol."""
    protocol = ev.protocol
    keys = unit_keys(protocol.level)
    rows = manifest.filter(pl.col("split") == protocol.split)
    units = unit_rows(rows, ev.labels, protocol.level)
    units = ev.units.select(keys).join(units, on=keys, how="left", maintain_order="left")
    if units["subject_id"].null_count():
        raise InputError(
            f"{name}: {units['subject_id'].null_count()} evaluated units are not in the manifest's "
            f"{protocol.split} split (pass the manifest it was evaluated with: --manifest)"
        )
    y, _ = targets(units, ev.labels, protocol, radiologist)
    return y, units["subject_id"].to_numpy()


def _shared_labels(evals: list[Evaluation], names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Labels every evaluation scored on the same rows; the others with the reason."""
    first = evals[0]
    shared, left_out = [], {}
    for label in first.labels:
        missing = [n for e, n in zip(evals, names, strict=True) if label not in e.metrics["labels"]]
        if missing:
            left_out[label] = f"not evaluated in {', '.join(missing)}"
            continue
        prints = {e.metrics["labels"][label].get("rows_fingerprint") for e in evals}
        if len(prints) != 1 or None in prints:
            left_out[label] = "rows fingerprints differ"
            continue
        if any(e.metrics["labels"][label].get("auroc") is None for e in evals):
            left_out[label] = "no AUROC (one class)"
            continue
        shared.append(label)
    for e in evals[1:]:
        for label in e.labels:
            if label not in first.metrics["labels"] and label not in left_out:
                left_out[label] = f"not evaluated in {names[0]}"
    return shared, left_out


def _pair(
    a: Evaluation,
    b: Evaluation,
    y: np.ndarray,
    groups: np.ndarray,
    shared: list[str],
    cfg: CompareConfig,
) -> dict[str, Any]:
    """compare.json's figures for a against b (delta = a - b) on the shared labels."""
    keys = unit_keys(a.protocol.level)
    pa_frame = a.units.select(*keys, *shared)
    pb_frame = b.units.select(*keys, *shared).rename({lab: f"{lab}\tb" for lab in shared})
    joined = pa_frame.join(pb_frame, on=keys, how="left", maintain_order="left")
    y_shared = y[:, [a.labels.index(lab) for lab in shared]]
    p_a = joined.select(shared).to_numpy().astype(np.float64)
    p_b = joined.select([f"{lab}\tb" for lab in shared]).to_numpy().astype(np.float64)
    lacking = np.isnan(p_b) & ~np.isnan(y_shared)
    if lacking.any():
        raise InputError("the two evaluations' predictions do not cover the same units")
    deltas = (
        paired_delta(y_shared, p_a, p_b, groups, cfg.n_bootstrap, cfg.seed)
        if cfg.n_bootstrap
        else None
    )
    per_label: dict[str, Any] = {}
    for j, label in enumerate(shared):
        keep = ~np.isnan(y_shared[:, j])
        test = delong_test(y_shared[keep, j], p_a[keep, j], p_b[keep, j])
        auc_a, auc_b = a.metrics["labels"][label]["auroc"], b.metrics["labels"][label]["auroc"]
        per_label[label] = {
            "auroc_a": auc_a,
            "auroc_b": auc_b,
            "delta_auroc": auc_a - auc_b,
            "delta_ci": None if deltas is None else percentile_interval(deltas[:, j], cfg.ci),
            "p_delong": None if test is None else test["p_value"],
        }
    in_macro = [
        j
        for j, label in enumerate(shared)
        if label in a.metrics["macro"]["labels"] and label in b.metrics["macro"]["labels"]
    ]
    macro: dict[str, Any] = {
        "labels": [shared[j] for j in in_macro],
        "n_labels": len(in_macro),
        "delta_auroc": None,
        "delta_ci": None,
    }
    if in_macro:
        macro["auroc_a"] = float(np.mean([per_label[shared[j]]["auroc_a"] for j in in_macro]))
        macro["auroc_b"] = float(np.mean([per_label[shared[j]]["auroc_b"] for j in in_macro]))
        macro["delta_auroc"] = macro["auroc_a"] - macro["auroc_b"]
        if deltas is not None:
            macro["delta_ci"] = percentile_interval(deltas[:, in_macro].mean(axis=1), cfg.ci)
    return {"labels": per_label, "macro": macro}


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Read the evaluations, check they are comparable, and compute every difference."""
    from cxr.mimic.manifest import read_manifest

    if len(cfg.dirs) < 2:
        raise InputError("cxr compare needs at least two evaluation directories")
    names = [Path(d).resolve().name for d in cfg.dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in cfg.dirs]
    evals = [read_evaluation(Path(d)) for d in cfg.dirs]
    first = evals[0]
    for ev, name in zip(evals[1:], names[1:], strict=True):
        diff = first.protocol.differences(ev.protocol)
        if diff:
            raise InputError(
                f"{names[0]} and {name} were evaluated under different protocols ({'; '.join(diff)})"
            )
    shared, left_out = _shared_labels(evals, names)
    if not shared:
        raise InputError(
            f"{' and '.join(names)}: no label was evaluated on the same rows "
            f"({'; '.join(f'{k}: {v}' for k, v in left_out.items())})"
        )
    manifest_path = _manifest_path(cfg, first)
    manifest = read_manifest(manifest_path)
    radiologist = None
    if first.protocol.labels == "radiologist":
        radiologist = load_radiologist_table(raw_dir_of(manifest_path, cfg.data_root))
    y, groups = _rebuild_targets(first, manifest, radiologist, names[0])
    unit_ids = first.units[unit_keys(first.protocol.level)[-1]].to_list()
    for label in shared:
        j = first.labels.index(label)
        if (
            label_fingerprint(unit_ids, y[:, j])
            != first.metrics["labels"][label]["rows_fingerprint"]
        ):
            raise InputError(
                f"{manifest_path}: gives other {label} rows than {names[0]} was evaluated on "
                "(the manifest changed since; pass the one it was evaluated with: --manifest)"
            )
    shared_y = y[:, [first.labels.index(lab) for lab in shared]]
    result: dict[str, Any] = {
        "a": names[0],
        "b": names[1],
        "protocol": first.metrics["protocol"],
        "rows_fingerprint": rows_fingerprint(unit_ids, shared, shared_y),
        "labels_left_out": left_out,
        "bootstrap": {"unit": "patient", "n": cfg.n_bootstrap, "seed": cfg.seed, "paired": True},
        "delta": "a - b",
        "p_delong_note": DELONG_NOTE,
        **_pair(first, evals[1], y, groups, shared, cfg),
    }
    if len(evals) > 2:
        result["more"] = [
            {"a": names[0], "b": name, **_pair(first, ev, y, groups, shared, cfg)}
            for ev, name in zip(evals[2:], names[2:], strict=True)
        ]
    return json_safe(result)


# --------------------------------------------------------------------------- output


def _signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3f}"


def _ci(ci: list | None) -> str:
    return "—" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _p(v: float | None) -> str:
    if v is None:
        return "—"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def table_lines(pair: dict[str, Any]) -> list[str]:
    """The printed table of one comparison, at most 80 columns wide."""
    lines = [f"{'label':<26} {'AUROC a':>7} {'AUROC b':>7} {'delta':>7}  {'95% CI':<16}  {'p':>6}"]
    for label, m in pair["labels"].items():
        lines.append(
            f"{label[:26]:<26} {m['auroc_a']:>7.3f} {m['auroc_b']:>7.3f} "
            f"{_signed(m['delta_auroc']):>7}  {_ci(m['delta_ci']):<16}  {_p(m['p_delong']):>6}"
        )
    macro = pair["macro"]
    if macro["delta_auroc"] is not None:
        name = f"macro ({macro['n_labels']} labels)"
        lines.append(
            f"{name:<26} {macro['auroc_a']:>7.3f} {macro['auroc_b']:>7.3f} "
            f"{_signed(macro['delta_auroc']):>7}  {_ci(macro['delta_ci']):<16}  {'':>6}"
        )
    return lines


def write_comparison(result: dict[str, Any], out: Path) -> Path:
    """compare.json and compare.html (with a forest plot of the differences); returns the page."""
    from cxr.core.atomic import write_text_atomic

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is an existing file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / COMPARE_JSON, json.dumps(result, indent=2, allow_nan=False) + "\n")
    page = out / "compare.html"
    write_text_atomic(page, _html(result))
    return page


def _forest_png(pair: dict[str, Any]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(pair["labels"])
    rows = [(n, pair["labels"][n]) for n in names]
    if pair["macro"]["delta_auroc"] is not None:
        rows.append((f"macro ({pair['macro']['n_labels']})", pair["macro"]))
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    for i, (_, m) in enumerate(rows):
        ci = m.get("delta_ci")
        if ci:
            ax.plot(ci, [i, i], color="#1f5fae", lw=2)
        ax.plot([m["delta_auroc"]], [i], "o", color="#1b1f24", ms=4)
    ax.axvline(0, color="grey", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("AUROC difference (a - b) with 95% paired patient-bootstrap interval")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _html(result: dict[str, Any]) -> str:
    import base64

    from cxr.evaluation.protocol import Protocol

    sections = []
    for pair in [result, *result.get("more", [])]:
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(c)}</td>"
                for c in (
                    label,
                    f"{m['auroc_a']:.3f}",
                    f"{m['auroc_b']:.3f}",
                    _signed(m["delta_auroc"]),
                    _ci(m["delta_ci"]),
                    _p(m["p_delong"]),
                )
            )
            + "</tr>"
            for label, m in pair["labels"].items()
        )
        macro = pair["macro"]
        if macro["delta_auroc"] is not None:
            rows += (
                f"<tr class=avg><td>macro ({macro['n_labels']} labels)</td>"
                f"<td>{macro['auroc_a']:.3f}</td><td>{macro['auroc_b']:.3f}</td>"
                f"<td>{_signed(macro['delta_auroc'])}</td><td>{_ci(macro['delta_ci'])}</td><td></td></tr>"
            )
        png = base64.b64encode(_forest_png(pair)).decode("ascii")
        sections.append(
            f"<h2>a = {html.escape(pair['a'])}, b = {html.escape(pair['b'])}</h2>"
            "<table><tr><th>label</th><th>AUROC a</th><th>AUROC b</th><th>a - b</th>"
            f"<th>95% CI</th><th>DeLong p</th></tr>{rows}</table>"
            f'<img alt="forest plot" src="data:image/png;base64,{png}">'
        )
    left = result.get("labels_left_out") or {}
    left_html = (
        "<p>Left out: "
        + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in left.items())
        + "</p>"
        if left
        else ""
    )
    boot = result["bootstrap"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cxr compare</title>
<style>body{{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;max-width:1100px}}
table{{border-collapse:collapse;font-size:13px}} th,td{{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:right}}
td:first-child,th:first-child{{text-align:left}} tr.avg td{{font-weight:600}} .mono{{font-family:monospace}}</style>
</head><body>
<h1>cxr compare</h1>
<p>Protocol: {html.escape(Protocol.from_dict(result["protocol"]).describe())}.
Rows fingerprint (shared labels): <span class=mono>{html.escape(result["rows_fingerprint"])}</span>.</p>
<p>Differences are a - b with 95% intervals from {boot["n"]} paired bootstrap resamples of patients
(seed {boot["seed"]}); p is DeLong's test for two correlated ROC curves. {html.escape(DELONG_NOTE)}</p>
{left_html}
{"".join(sections)}
</body></html>
"""

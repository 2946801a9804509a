"""The outputs of `cxr probe`, from a `ProbeResult` (`cxr.evaluation.probe`): each fraction's
evaluation directory (exactly `cxr evaluate`'s files), probe.json, probe.html with the
label-efficiency plot, and the terminal table. Nothing here fits or scores anything."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import shutil
from pathlib import Path
from typing import Any

from cxr.core.jsonsafe import json_safe
from cxr.evaluation.probe import C_CHOSEN_ON, ProbeResult, fraction_name, store_name

PROBE_JSON = "probe.json"
PROBE_HTML = "probe.html"
PROBE_PNG = "probe.png"


def _config_shown(result: ProbeResult) -> dict[str, Any]:
    """The probe's options as each report shows them (paths as text, the policy as a table)."""
    shown = {}
    for f in dataclasses.fields(result.config):
        value = getattr(result.config, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = list(value)
        shown[f.name] = value
    return shown


def summary(result: ProbeResult) -> dict[str, Any]:
    """probe.json: per fraction its patients, images, macro AUROC with interval, per-label AUROC
    and chosen C, the labels without a probe and why."""
    cfg = result.config
    fractions = []
    for fr in result.fractions:
        entry: dict[str, Any] = {
            "fraction": fr.fraction,
            "dir": fraction_name(fr.fraction) if fr.evaluation is not None else None,
            "patients": fr.patients,
            "images": fr.images,
            "labels_not_fitted": fr.not_fitted,
            "macro": None,
            "labels": {},
        }
        if fr.evaluation is not None:
            m = fr.evaluation.metrics
            macro = m["macro"]
            entry["macro"] = {
                "auroc": macro["auroc"],
                "auroc_ci": macro.get("auroc_ci"),
                "n_labels": macro["n_labels"],
                "labels": macro["labels"],
                "left_out": macro.get("left_out") or {},
            }
            entry["rows_fingerprint"] = m["rows_fingerprint"]
            for label, lm in m["labels"].items():
                entry["labels"][label] = {
                    "auroc": lm["auroc"],
                    "auroc_ci": lm.get("auroc_ci"),
                    "C": fr.chosen_c.get(label),
                    "in_macro": label in macro["labels"],
                }
        for label, reason in fr.not_fitted.items():
            entry["labels"][label] = {
                "auroc": None,
                "auroc_ci": None,
                "C": None,
                "not_fitted": reason,
            }
        fractions.append(entry)
    meta = result.meta
    return json_safe(
        {
            "embeddings": {
                "name": store_name(result.meta, result.store),
                "spec": meta.get("spec"),
                "dim": meta.get("dim"),
                "dir": str(result.store),
                "embed_json_sha256": result.provenance["embeddings_sha256"],
            },
            "manifest": str(result.manifest),
            "protocol": result.protocol.to_dict(),
            "split": cfg.split,
            "level": cfg.level,
            "training": {
                "label_policy": cfg.policy.to_dict(),
                "label_source": cfg.label_source,
                "patients": result.train_patients,
                "images": result.train_images,
                "subsets": "train patients permuted once with the seed; fraction f takes the "
                "first ceil(f * patients), at least 1: the subsets are nested",
            },
            "seed": cfg.seed,
            "C_grid": list(cfg.c_grid),
            "C_chosen_on": C_CHOSEN_ON,
            "bootstrap": {"unit": "patient", "n": cfg.n_bootstrap, "seed": cfg.seed},
            "min_positives": cfg.min_positives,
            "fractions": fractions,
            "common_macro": result.common_macro,
            "notes": result.notes,
            "cxr_version": result.provenance["cxr_version"],
            "date": result.provenance["date"],
            "synthetic_demo": result.provenance["synthetic_demo"],
        }
    )


# --------------------------------------------------------------------------- terminal


def _with_ci(value, ci) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table_lines(s: dict[str, Any]) -> list[str]:
    """fraction -> patients, images, macro AUROC [95% CI] and the labels it averages; 80 columns."""
    lines = [
        f"{'fraction':<9}{'patients':>9}{'images':>9}  {'macro AUROC [95% CI]':<22}{'labels':>7}"
    ]
    for fr in s["fractions"]:
        macro = fr["macro"] or {}
        lines.append(
            f"{fr['fraction']!r:<9}{fr['patients']:>9}{fr['images']:>9}  "
            f"{_with_ci(macro.get('auroc'), macro.get('auroc_ci')):<22}"
            f"{macro.get('n_labels', 0):>7}"
        )
    common = s.get("common_macro")
    if common:
        lines.append(f"over the {len(common['labels'])} labels every fraction averages:")
        for name, m in common["fractions"].items():
            lines.append(
                f"{name.removeprefix('fraction-'):<9}{'':>18}  {_with_ci(m['auroc'], m['auroc_ci'])}"
            )
    return lines


def not_fitted_lines(s: dict[str, Any]) -> list[str]:
    """One line per fraction with labels that got no probe, naming them and why."""
    out = []
    for fr in s["fractions"]:
        if fr["labels_not_fitted"]:
            out.append(
                f"fraction {fr['fraction']!r}: no probe for "
                + "; ".join(
                    f"{k} ({v.removeprefix('not fitted: ')})"
                    for k, v in fr["labels_not_fitted"].items()
                )
            )
    return out


# --------------------------------------------------------------------------- files


def write_probe(result: ProbeResult, out: Path) -> Path:
    """Every fraction's evaluation directory, probe.json, probe.png and probe.html; returns the
    page. Each file is written to a temporary name and renamed."""
    from cxr.core.atomic import write_bytes_atomic, write_text_atomic
    from cxr.core.errors import InputError
    from cxr.core.progress import phase
    from cxr.evaluation.evaluate import write_evaluation
    from cxr.evaluation.report import write_report

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is an existing file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    # Fraction directories of an earlier run into this --out that this run does not write (other
    # --fractions, or no label fitted this time) would be read as current by compare and view.
    current = {fraction_name(fr.fraction) for fr in result.fractions if fr.evaluation is not None}
    for stale in out.glob("fraction-*"):
        if stale.is_dir() and stale.name not in current and (stale / "metrics.json").is_file():
            shutil.rmtree(stale)
    config = _config_shown(result)
    for fr in result.fractions:
        if fr.evaluation is None:
            continue
        d = out / fraction_name(fr.fraction)
        with phase(f"fraction {fr.fraction!r}: metrics, figures and report.html"):
            write_evaluation(fr.evaluation, d)
            write_report(fr.evaluation, d, {**config, "fraction": fr.fraction})
    s = summary(result)
    write_text_atomic(out / PROBE_JSON, json.dumps(s, indent=2, allow_nan=False) + "\n")
    png = efficiency_png(s)
    write_bytes_atomic(out / PROBE_PNG, png)
    page = out / PROBE_HTML
    write_text_atomic(page, _html(s, png))
    return page


def point_note(fraction: dict[str, Any], most: int) -> str:
    """A plotted fraction's label: its training patients, and its number of labels when its
    macro averages fewer than the others' (labels with one class in its subset have no probe),
    since it is then not the same average as its neighbours'."""
    n = fraction["macro"].get("n_labels", 0)
    return f"{fraction['patients']} pat." + (f", {n} labels" if n != most else "")


def efficiency_png(s: dict[str, Any]) -> bytes:
    """Macro AUROC with its 95% interval against the training fraction (log axis), each point
    labelled with its number of training patients (and of labels, where its macro has fewer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [fr for fr in s["fractions"] if fr["macro"] and fr["macro"]["auroc"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ax.set_xscale("log")  # before the ticks: setting the scale replaces them
    if points:
        xs = [fr["fraction"] for fr in points]
        ys = [fr["macro"]["auroc"] for fr in points]
        lo = [y - (fr["macro"]["auroc_ci"] or [y, y])[0] for fr, y in zip(points, ys, strict=True)]
        hi = [(fr["macro"]["auroc_ci"] or [y, y])[1] - y for fr, y in zip(points, ys, strict=True)]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color="#1f5fae", capsize=4, lw=1.5)
        common = s.get("common_macro")
        if common:  # the same average at every fraction, beside each fraction's own
            cx = [fr["fraction"] for fr in points if fr["dir"] in common["fractions"]]
            cm = [
                common["fractions"][fr["dir"]] for fr in points if fr["dir"] in common["fractions"]
            ]
            cy = [m["auroc"] for m in cm]
            clo = [y - (m["auroc_ci"] or [y, y])[0] for m, y in zip(cm, cy, strict=True)]
            chi = [(m["auroc_ci"] or [y, y])[1] - y for m, y in zip(cm, cy, strict=True)]
            ax.errorbar(
                [x * 1.04 for x in cx],  # nudged right so the two intervals stay apart
                cy,
                yerr=[clo, chi],
                fmt="s--",
                color="#888",
                capsize=3,
                lw=1.2,
                label=f"over the {len(common['labels'])} labels every fraction averages",
            )
            ax.plot([], [], "o-", color="#1f5fae", label="each fraction's macro")
            ax.legend(fontsize=8, loc="lower right")
        most = max(fr["macro"].get("n_labels", 0) for fr in points)
        for fr, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(
                point_note(fr, most),
                (x, y),
                textcoords="offset points",
                xytext=(12, -12),
                ha="left",
                fontsize=8,
                color="#555",
            )
        ax.set_xticks(xs, [f"{x!r}" for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    else:
        ax.text(0.5, 0.5, "no fraction has a macro AUROC", ha="center", transform=ax.transAxes)
    ax.set_xlabel("fraction of the training patients (log scale)")
    ax.set_ylabel(f"macro AUROC, {s['split']} split (95% CI)")
    ax.set_title(f"Linear probe on {s['embeddings']['name']} embeddings", fontsize=11)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#1b1f24;
max-width:1200px} h1{font-size:24px} h2{font-size:18px;margin-top:24px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{padding:3px 6px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#f3f5f7} td:first-child,th:first-child{text-align:left}
.ci,.c{display:block;font-size:10px;color:#555} .muted{color:#777} .scroll{overflow-x:auto}
.banner{background:#b3261e;color:#fff;padding:10px 14px;font-weight:600;border-radius:4px}
.note{background:#fff7e0;border-left:4px solid #f0b400;padding:6px 10px;font-size:13px}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
img{max-width:100%}
"""


def _ci_html(value, ci) -> str:
    if value is None:
        return "—"
    below = f"<span class=ci>[{ci[0]:.3f}, {ci[1]:.3f}]</span>" if ci else ""
    return f"{value:.3f}{below}"


def _html(s: dict[str, Any], png: bytes) -> str:
    from cxr.evaluation.protocol import Protocol
    from cxr.evaluation.report import DEMO_BANNER, policy_text

    esc = html.escape
    banner = f'<p class="banner">{esc(DEMO_BANNER)}</p>' if s["synthetic_demo"] else ""
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in s["notes"])
    fractions = s["fractions"]
    rows = []
    for fr in fractions:
        macro = fr["macro"] or {}
        link = (
            f'<a href="{esc(fr["dir"])}/report.html">report</a>' if fr["dir"] else "no label fitted"
        )
        rows.append(
            f"<tr><td>{fr['fraction']!r}</td><td>{fr['patients']}</td><td>{fr['images']}</td>"
            f"<td>{_ci_html(macro.get('auroc'), macro.get('auroc_ci'))}</td>"
            f"<td>{macro.get('n_labels', 0)}</td><td>{link}</td></tr>"
        )
    labels = list(dict.fromkeys(lab for fr in fractions for lab in fr["labels"]))
    head = "".join(f"<th>{fr['fraction']!r}</th>" for fr in fractions)
    per_label = []
    for label in labels:
        cells = []
        for fr in fractions:
            m = fr["labels"].get(label)
            if m is None:
                cells.append("<td>—</td>")
            elif m.get("not_fitted"):
                cells.append(f'<td class=muted title="{esc(m["not_fitted"])}">not fitted</td>')
            else:
                flag = "" if m.get("in_macro") else "*"
                c = f"<span class=c>C={m['C']:g}</span>" if m.get("C") is not None else ""
                cells.append(f"<td>{_ci_html(m['auroc'], m['auroc_ci'])}{flag}{c}</td>")
        per_label.append(f"<tr><td>{esc(label)}</td>{''.join(cells)}</tr>")
    emb = s["embeddings"]
    macro_sets = {tuple(fr["macro"]["labels"]) for fr in fractions if fr["macro"]}
    macro_note = (
        '<p class="note">The macro averages differ in their labels between fractions (a label '
        "needs both classes in its training subset and enough positive studies): the plot's "
        "grey squares average the labels every fraction has"
        + (f" ({esc(', '.join(s['common_macro']['labels']))})" if s.get("common_macro") else "")
        + ", and each label's row is below.</p>"
        if len(macro_sets) > 1
        else ""
    )
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    boot = s["bootstrap"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cxr probe: {esc(emb["name"])}</title>
<style>{_CSS}</style></head><body>
{banner}
<h1>Linear probe on {esc(emb["name"])} embeddings</h1>
<p>Embeddings <b>{esc(str(emb["name"]))}</b> ({esc(str(emb["spec"]))}, dimension {esc(str(emb["dim"]))});
embed.json SHA-256 <span class=mono>{esc(emb["embed_json_sha256"])}</span>.</p>
<p><b>Evaluation:</b> {esc(Protocol.from_dict(s["protocol"]).describe())}; intervals from
{boot["n"]} patient resamples (seed {boot["seed"]}). <b>Training:</b> logistic regression per label
on standardised embeddings of the train split's images, label policy
{esc(policy_text(s["training"]["label_policy"]))}, {esc(s["training"]["label_source"])} labels;
{esc(s["training"]["subsets"])} (seed {s["seed"]}; {s["training"]["patients"]} patients,
{s["training"]["images"]} images in all). <b>C</b> from {esc(", ".join(f"{c:g}" for c in s["C_grid"]))},
chosen per label and fraction by {esc(s["C_chosen_on"])}; the validate split also fixes the
operating points, so it is never the evaluated split unless asked.</p>
{notes}
<h2>Label efficiency</h2>
<img alt="macro AUROC against the fraction of training patients" src="{uri}">
<div class="scroll"><table><tr><th>fraction</th><th>patients</th><th>images</th>
<th>macro AUROC [95% CI]</th><th>labels in macro</th><th>evaluation</th></tr>{"".join(rows)}</table></div>
{macro_note}
<h2>Per label</h2>
<p class="muted">AUROC with its 95% interval and the chosen C; * shown but left out of the macro
(fewer than {s["min_positives"]} positive studies or one class); "not fitted": one class in that
fraction's training subset.</p>
<div class="scroll"><table><tr><th>label</th>{head}</tr>{"".join(per_label)}</table></div>
<p class="muted">cxr {esc(str(s["cxr_version"]))}, {esc(str(s["date"]))}.</p>
</body></html>
"""

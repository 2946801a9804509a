"""The evaluation report: figures, the gallery of confident errors and one self-contained HTML page,
drawn from an `Evaluation` (`cxr.evaluation.evaluate`). Nothing here computes a metric."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from cxr.stats.metrics import reliability_bins

DEMO_BANNER = (
    "Synthetic demo data: this manifest was built from a tree written by `cxr demo`. "
    "These figures say nothing about any real model or patient."
)


# --------------------------------------------------------------------------- figures


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # the layout is fixed when the figure is made
    return buf.getvalue()


def write_figures(
    fig_dir: Path, labels: list[str], y: np.ndarray, p: np.ndarray, ece_bins: int = 15
) -> dict[str, bytes]:
    """ROC and PR curves per label (one grid each) and a reliability diagram; returns PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from cxr.core.atomic import write_bytes_atomic

    ncols = 5
    nrows = max(1, -(-len(labels) // ncols))
    figures: dict[str, bytes] = {}
    for kind in ("roc", "pr"):
        # Shared axes and labels on the outer panels only: a grid of 14 panels lays out in a
        # fraction of the time of 14 independent ones.
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(3.0 * ncols, 2.8 * nrows),
            squeeze=False,
            sharex=True,
            sharey=True,
            layout="constrained",
        )
        for ax in axes.ravel()[len(labels) :]:
            ax.axis("off")
        for j, label in enumerate(labels):
            ax = axes.ravel()[j]
            keep = ~np.isnan(y[:, j])
            yj, pj = y[keep, j], p[keep, j]
            ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            if yj.size == 0 or yj.min() == yj.max():
                ax.text(
                    0.5, 0.5, "not evaluable\n(one class)", ha="center", va="center", fontsize=8
                )
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(yj, pj)
                ax.plot(fpr, tpr, lw=1.5)
                ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
            else:
                prec, rec, _ = precision_recall_curve(yj, pj)
                ax.plot(rec, prec, lw=1.5)
                ax.axhline(yj.mean(), ls="--", color="grey", lw=0.8)
        fig.supxlabel("1 - specificity" if kind == "roc" else "recall", fontsize=9)
        fig.supylabel("sensitivity" if kind == "roc" else "precision", fontsize=9)
        fig.suptitle(
            "ROC curves" if kind == "roc" else "Precision-recall curves (dashed: prevalence)"
        )
        figures[kind] = _png_bytes(fig)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    keep = ~np.isnan(y)
    bins = reliability_bins(y[keep], p[keep], ece_bins)
    mp, fr = np.array(bins["mean_p"], float), np.array(bins["freq"], float)
    ok = np.array(bins["count"]) > 0
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect calibration")
    ax.plot(mp[ok], fr[ok], "o-", label="all labels pooled")
    ax.set_xlabel(f"mean predicted probability ({ece_bins} equal-width bins)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability diagram")
    figures["reliability"] = _png_bytes(fig)
    plt.close(fig)
    for name, data in figures.items():
        write_bytes_atomic(fig_dir / f"{name}.png", data)
    return figures


# --------------------------------------------------------------------------- gallery


def confident_errors(evaluation, model, pre, cache, manifest, size: int, device: str) -> list[dict]:
    """The most confident errors at each label's Youden operating point: false positives with the
    highest probability and false negatives with the lowest, over all labels, each with the image
    as the model saw it, its Grad-CAM for the label and the report's impression. At study level
    the study's first image is shown."""
    import polars as pl

    from cxr.imaging.cache import rows_for
    from cxr.inference.explain import grad_cam, overlay

    labels, y, p, units = evaluation.labels, evaluation.y, evaluation.p, evaluation.units
    fps, fns = [], []
    for j, label in enumerate(labels):
        t = evaluation.metrics["labels"][label]["threshold"]
        if t is None:
            continue
        for i in np.flatnonzero((y[:, j] == 0) & (p[:, j] >= t)):
            fps.append((float(p[i, j]), int(i), j))
        for i in np.flatnonzero((y[:, j] == 1) & (p[:, j] < t)):
            fns.append((float(p[i, j]), int(i), j))
    fps = sorted(fps, key=lambda e: -e[0])[:size]
    fns = sorted(fns, key=lambda e: e[0])[:size]

    first_image = (
        evaluation.per_image.sort("study_id", "dicom_id")
        .group_by("study_id", maintain_order=True)
        .first()
        if evaluation.per_image is not None
        else None
    )
    items = []
    for kind, entries in (("false positive", fps), ("false negative", fns)):
        for prob, i, j in entries:
            study_id = int(units["study_id"][i])
            if "dicom_id" in units.columns:
                dicom_id = str(units["dicom_id"][i])
            else:
                dicom_id = str(first_image.filter(pl.col("study_id") == study_id)["dicom_id"][0])
            square = pre.square(np.asarray(cache.images[rows_for(cache, [dicom_id])[0]]))
            heat = grad_cam(model, pre.tensor(square[None]).to(device), j)
            heading, text = _report_excerpt(manifest, dicom_id)
            items.append(
                {
                    "kind": kind,
                    "label": labels[j],
                    "probability": prob,
                    "threshold": evaluation.metrics["labels"][labels[j]]["threshold"],
                    "study_id": study_id,
                    "dicom_id": dicom_id,
                    "thumbnail": _png_data_uri(square),
                    "heatmap": _png_data_uri(overlay(square, heat)),
                    "report_heading": heading,
                    "impression": text,
                }
            )
    return items


def _report_excerpt(manifest, dicom_id: str) -> tuple[str, str]:
    """The report's impression, else its findings (what the labels were computed from)."""
    import polars as pl

    row = manifest.filter(pl.col("dicom_id") == dicom_id)
    if row.height == 0:
        return "Report", "not available"
    row = row.row(0, named=True)
    for column, heading in (("impression", "Impression"), ("findings", "Findings")):
        if row.get(column):
            return heading, row[column]
    if row.get("report_path"):
        return "Report", "no impression or findings section"
    return "Report", "not available (not downloaded)"


def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- tables

# The tables fit an 800 px window: intervals sit under their value in small type, headers and
# label names wrap, long provenance values break, and anything wider scrolls in its own box.
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#1b1f24;
background:#fff;max-width:1400px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{padding:3px 4px;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#f3f5f7;white-space:normal} td:first-child,th:first-child{text-align:left}
tr.avg td{font-weight:600;background:#fafafa} tr.flag td{color:#8a6d00}
tr.group td{font-weight:600;background:#f8f9fa;text-align:left}
.banner{background:#b3261e;color:#fff;padding:10px 14px;font-size:16px;font-weight:600;border-radius:4px}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px} td{white-space:nowrap}
table.prov th,table.prov td{text-align:left} table.prov td{white-space:normal;word-break:break-all}
td.name{white-space:normal;min-width:90px}
.ci{display:block;font-size:10px;color:#555;white-space:normal}
.scroll{overflow-x:auto;max-width:100%}
.note{background:#fff7e0;border-left:4px solid #f0b400;padding:6px 10px;font-size:13px}
.muted{color:#777} img.fig{max-width:100%;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;width:330px;font-size:12px}
.card img{width:160px;height:160px;image-rendering:auto}
.fp{color:#b3261e} .fn{color:#1f5fae}
pre{background:#f6f8fa;padding:8px;font-size:12px;overflow:auto}
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _with_ci(value: Any, ci: Any) -> str:
    if value is None:
        return "—"
    return _fmt(value) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table_lines(metrics: dict) -> list[str]:
    """The terminal table, compact enough for 80 columns: label (`*`: left out of the macro),
    positives, AUROC with its interval, AUPRC, and sensitivity and specificity at the Youden
    point; then the macro. The full table is in report.html and metrics.json."""
    rows = []
    for label, m in metrics["labels"].items():
        flag = "*" if m.get("excluded_from_macro") else ""
        rows.append(
            (
                label + flag,
                str(m["n_pos"]),
                _with_ci(m["auroc"], m.get("auroc_ci")),
                _fmt(m["auprc"]),
                _fmt(m["sensitivity"]),
                _fmt(m["specificity"]),
            )
        )
    macro = metrics["macro"]
    rows.append(
        (
            f"macro ({macro['n_labels']} labels)",
            "",
            _with_ci(macro["auroc"], macro.get("auroc_ci")),
            _fmt(macro["auprc"]),
            _fmt(macro["sensitivity"]),
            _fmt(macro["specificity"]),
        )
    )
    head = ("label", "pos", "AUROC [95% CI]", "AUPRC", "sens.", "spec.")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(row) -> str:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2])]
        cells += [c.rjust(w) for c, w in zip(row[3:], widths[3:], strict=True)]
        return "  ".join(cells).rstrip()

    return [line(head), *(line(r) for r in rows)]


def left_out_text(metrics: dict) -> str:
    left = metrics["macro"].get("left_out") or {}
    if not left:
        return f"macro over all {metrics['macro']['n_labels']} labels"
    return f"macro over {metrics['macro']['n_labels']} labels; left out (*): " + "; ".join(
        f"{k} ({v})" for k, v in left.items()
    )


def protocol_text(metrics: dict) -> str:
    from cxr.evaluation.protocol import Protocol

    return Protocol.from_dict(metrics["protocol"]).describe()


# --------------------------------------------------------------------------- HTML

_OP_NAMES = {"youden": "Youden", "spec90": "spec. ≥ 0.90", "spec95": "spec. ≥ 0.95"}


def _cell(text: str, cls: str = "") -> str:
    return f"<td{f' class={cls!r}' if cls else ''}>{html.escape(text)}</td>"


def _ci_cell(value: Any, ci: Any) -> str:
    """A value with its interval below it in small type (a narrow column)."""
    if value is None:
        return "<td>—</td>"
    below = f"<span class=ci>[{ci[0]:.3f}, {ci[1]:.3f}]</span>" if ci else ""
    return f"<td>{html.escape(_fmt(value))}{below}</td>"


def _discrimination_table(metrics: dict) -> str:
    head = [
        "label",
        "pos. studies",
        "pos",
        "neg",
        "prev.",
        "AUROC [95% CI]",
        "AUPRC [95% CI]",
        "validate AUROC",
        "validate AUPRC",
        "ECE",
        "Brier",
        "fingerprint",
    ]
    validate = metrics.get("validate") or {}
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for label, m in metrics["labels"].items():
        v = validate.get(label) or {}
        flagged = m.get("excluded_from_macro")
        name = label + (f" * ({flagged})" if flagged else "")
        rows.append(
            f"<tr{' class=flag' if flagged else ''}>"
            + _cell(name, "name")
            + _cell(str(m.get("n_pos_studies", "")))
            + _cell(str(m["n_pos"]))
            + _cell(str(m["n_neg"]))
            + _cell(_fmt(m["prevalence"]))
            + _ci_cell(m["auroc"], m.get("auroc_ci"))
            + _ci_cell(m["auprc"], m.get("auprc_ci"))
            + _cell(_fmt(v.get("auroc")))
            + _cell(_fmt(v.get("auprc")))
            + _cell(_fmt(m["ece"]))
            + _cell(_fmt(m["brier"]))
            + _cell((m.get("rows_fingerprint") or "")[:8], "mono")
            + "</tr>"
        )
    macro, micro = metrics["macro"], metrics["micro"]
    for name, a in ((f"macro ({macro['n_labels']} labels)", macro), ("micro", micro)):
        rows.append(
            "<tr class=avg>"
            + _cell(name, "name")
            + _cell("")
            + _cell("")
            + _cell("")
            + _cell("")
            + _ci_cell(a["auroc"], a.get("auroc_ci"))
            + _ci_cell(a["auprc"], a.get("auprc_ci"))
            + _cell("")
            + _cell("")
            + _cell(_fmt(a["ece"]))
            + _cell(_fmt(a["brier"]))
            + _cell("")
            + "</tr>"
        )
    return '<div class="scroll"><table>' + "".join(rows) + "</table></div>"


def _operating_table(metrics: dict) -> str:
    """One heading row per label, then its operating points (narrow enough for 800 px)."""
    head = ["point", "threshold", "sensitivity", "specificity", "PPV", "F1"]
    head += ["TP / FP / FN / TN", "validate sens. / spec."]
    validate = metrics.get("validate") or {}
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for label, m in metrics["labels"].items():
        rows.append(f"<tr class=group><td colspan={len(head)}>{html.escape(label)}</td></tr>")
        v = validate.get(label) or {}
        for op, point in (m.get("operating_points") or {}).items():
            counts = " / ".join(_fmt(point[c]) for c in ("tp", "fp", "fn", "tn"))
            val = f"{_fmt(v.get('sensitivity'))} / {_fmt(v.get('specificity'))}"
            rows.append(
                "<tr>"
                + _cell(_OP_NAMES.get(op, op))
                + _cell(_fmt(point["threshold"]))
                + "".join(
                    _ci_cell(point[f], point.get(f"{f}_ci"))
                    for f in ("sensitivity", "specificity", "ppv", "f1")
                )
                + _cell(counts)
                + _cell(val if op == "youden" else "")
                + "</tr>"
            )
    return '<div class="scroll"><table>' + "".join(rows) + "</table></div>"


def _counts_table(metrics: dict) -> str:
    counts = metrics["counts"]
    keys = list(next(iter(counts.values())))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + _cell(split) + "".join(_cell(str(c.get(k, ""))) for k in keys) + "</tr>"
        for split, c in counts.items()
    )
    return f"<table><tr><th>split</th>{head}</tr>{body}</table>"


def _provenance(metrics: dict) -> str:
    prov = metrics.get("provenance") or {}
    if prov.get("embeddings"):  # a linear probe on stored embeddings (cxr probe)
        scored = (
            "embeddings",
            f"{prov['embeddings']} (embed.json SHA-256 {prov.get('embeddings_sha256', '')})",
        )
    elif prov.get("model"):  # a published model (cxr evaluate --model)
        weights = (
            f"{prov['model']}: {prov.get('weights', '')} (SHA-256 {prov.get('weights_sha256', '')})"
        )
        scored = ("model", weights)
    else:
        scored = (
            "checkpoint",
            f"{prov.get('checkpoint', '')} (SHA-256 {prov.get('checkpoint_sha256', '')})",
        )
    items = [
        ("protocol", protocol_text(metrics)),
        ("rows fingerprint", metrics.get("rows_fingerprint", "")),
        scored,
        ("manifest", f"{prov.get('manifest', '')} (SHA-256 {prov.get('manifest_sha256', '')})"),
        ("cxr", f"{prov.get('cxr_version', '')}, {prov.get('date', '')}"),
    ]
    return (
        "<table class=prov>"
        + "".join(
            f"<tr><th>{html.escape(k)}</th><td class=mono>{html.escape(str(v))}</td></tr>"
            for k, v in items
        )
        + "</table>"
    )


def _policy_sentence(policy: dict) -> str:
    if not policy:
        return "How the model was trained does not change which rows are scored."
    return (
        f"The training label policy ({policy_text(policy)}) does not change which rows are scored."
    )


def _model_line(model: dict) -> str:
    """The line under the title: what was scored."""
    if model.get("description"):
        return str(model["description"])
    return f"{model.get('arch')}, epoch {model.get('epoch')}, image size {model.get('image_size')}"


def write_html(path: Path, evaluation, figures: dict[str, bytes], config: dict) -> None:
    from cxr.core.atomic import write_text_atomic
    from cxr.evaluation.subgroup_report import subgroup_section

    metrics = evaluation.metrics

    def img(data: bytes, alt: str) -> str:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return f'<img class="fig" alt="{html.escape(alt)}" src="{uri}">'

    cards = []
    for g in evaluation.gallery:
        cls = "fp" if g["kind"] == "false positive" else "fn"
        cards.append(
            f'<div class="card"><div class="{cls}"><b>{html.escape(g["kind"])}</b>: '
            f"{html.escape(g['label'])} p={g['probability']:.3f} (thr. {g['threshold']:.3f})</div>"
            f'<div class="muted">study {g["study_id"]} · image {html.escape(g["dicom_id"])}</div>'
            f'<img alt="thumbnail" src="{g["thumbnail"]}"><img alt="Grad-CAM" src="{g["heatmap"]}">'
            f"<div><b>{html.escape(g['report_heading'])}:</b> {html.escape(g['impression'])}</div></div>"
        )
    prov = metrics.get("provenance") or {}
    banner = (
        f'<p class="banner">{html.escape(DEMO_BANNER)}</p>' if prov.get("synthetic_demo") else ""
    )
    note = f'<p class="note">{html.escape(metrics["note"])}</p>' if metrics.get("note") else ""
    boot = metrics["bootstrap"]
    interval = (
        f"95% percentile bootstrap over {boot['n']} resamples of patients (seed {boot['seed']}), "
        "shared by every label, operating point and average"
        if boot["n"]
        else "no intervals (--bootstrap 0)"
    )
    model = metrics.get("model") or {}
    policy = model.get("training_label_policy") or {}
    ops = "; ".join(f"{_OP_NAMES.get(k, k)}: {v}" for k, v in metrics["operating_points"].items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cxr evaluation: {html.escape(metrics["split"])}</title>
<style>{_CSS}</style></head><body>
{banner}
<h1>cxr evaluation — {html.escape(metrics["split"])} split, {html.escape(metrics["level"])} level</h1>
<p class="muted">{html.escape(_model_line(model))}</p>
{_provenance(metrics)}
{note}
<h2>Protocol</h2>
<p>{html.escape(protocol_text(metrics))}. {html.escape(_policy_sentence(policy))}
<b>Intervals:</b> {html.escape(interval)}. <b>Operating points</b>, chosen per label on the validate
split's CheXpert labels and applied unchanged: {html.escape(ops)}.
<b>Macro:</b> {html.escape(left_out_text(metrics))} (a label needs {metrics["min_positives"]} positive
studies). <b>ECE:</b> {metrics["ece_bins"]} equal-width bins.</p>
<h2>Dataset</h2>
{_counts_table(metrics)}
<h2>Discrimination and calibration</h2>
{_discrimination_table(metrics)}
<p class="muted">Micro pools the (label, {html.escape(metrics["level"])}) pairs of the macro's labels,
each label's decisions at its own Youden threshold. The fingerprint column shows the first 8 hex
digits of each label's rows fingerprint: two results are comparable on a label exactly when these match.</p>
<h2>Operating points</h2>
{_operating_table(metrics)}
{subgroup_section(metrics, evaluation.labels, figures, img)}
<h2>ROC curves</h2>{img(figures["roc"], "ROC curves")}
<h2>Precision-recall curves</h2>{img(figures["pr"], "PR curves")}
<h2>Calibration</h2>{img(figures["reliability"], "reliability diagram")}
{_gallery_section(metrics, cards)}
<h2>Run configuration</h2>
<pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>
</body></html>
"""
    write_text_atomic(path, page)


def _gallery_section(metrics: dict, cards: list[str]) -> str:
    if not (metrics.get("provenance") or {}).get("checkpoint"):
        return (
            '<h2>Most confident errors</h2><p class="muted">None shown: the gallery explains '
            "errors with Grad-CAM, which needs a cxr checkpoint; this evaluation scored "
            f"{html.escape(_model_line(metrics.get('model') or {}))}.</p>"
        )
    return f"""<h2>Most confident errors</h2>
<p class="muted">False positives with the highest probability and false negatives with the lowest,
over all labels, at each label's Youden threshold; left the image as the model saw it, right its
Grad-CAM for the label.</p>
<div class="gallery">{"".join(cards) or "<p>No errors at the chosen thresholds.</p>"}</div>"""


def policy_text(policy: dict) -> str:
    text = f"uncertain={policy.get('uncertain')}, missing={policy.get('missing')}"
    overrides = policy.get("overrides") or {}
    if overrides:
        text += "; overrides: " + "; ".join(
            f"{k}: " + ", ".join(f"{a}={b}" for a, b in dict(v).items())
            for k, v in overrides.items()
        )
    return text


def write_report(evaluation, out: Path, config: dict | None = None) -> Path:
    """figures/*.png and report.html for an Evaluation; returns the page's path."""
    from cxr.evaluation.subgroup_report import write_subgroup_figures

    figures = write_figures(
        out / "figures",
        evaluation.labels,
        evaluation.y,
        evaluation.p,
        evaluation.metrics.get("ece_bins", 15),
    )
    figures.update(write_subgroup_figures(out / "figures", evaluation.metrics, evaluation.labels))
    page = out / "report.html"
    write_html(page, evaluation, figures, config or {})
    return page

"""`cxr evaluate`: a checkpoint on one split of the manifest -> metrics, predictions, figures, HTML.

Order of events: load the checkpoint (model, labels, image size, normalization, label policy);
predict the validate split (it fixes each label's threshold) and the evaluated split from the image
cache; aggregate per study (mean of a study's image probabilities) unless `level="image"`; compute
the metrics under the checkpoint's label policy (uncertain excluded; blank excluded under
`missing=ignore`); write `metrics.json`, `predictions.csv`, figures and `report.html` atomically.

Outputs identify images by `dicom_id` and studies by `study_id`, never by `subject_id`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.errors import CxrError, InputError
from cxr.stats.metrics import (
    THRESHOLD_RULE,
    MetricsConfig,
    aggregate_studies,
    choose_thresholds,
    compute_metrics,
    eval_targets,
    reliability_bins,
)

SPLIT_NOTE = (
    "MIMIC-CXR's official test split is enriched for abnormal studies (about 89% have a finding vs "
    "77% in train): figures on it are not comparable with figures on random splits."
)

SAME_SPLIT_NOTE = (
    "Evaluated on the validate split, where the thresholds were also chosen: sensitivity, "
    "specificity, PPV and F1 are optimistic here; AUROC, AUPRC, ECE and Brier do not use them."
)


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: Path
    split: str = "test"
    level: str = "study"  # "study" or "image"
    n_bootstrap: int = 1000
    seed: int = 0
    out: Path | None = None  # default: reports/<checkpoint's run directory name>
    manifest: Path | None = None  # default: <data root>/processed/manifest.parquet
    cache: Path | None = None  # default: <data root>/interim/cache-<checkpoint image_size>
    batch_size: int = 64
    device: str = "cpu"
    gallery_size: int = 6  # false positives and false negatives each, overall
    data_root: Path = Path("data")

    def out_dir(self) -> Path:
        return self.out or Path("reports") / Path(self.checkpoint).resolve().parent.name


# --------------------------------------------------------------------------- inputs


def _read_manifest(path: Path):
    from cxr.mimic.manifest import read_manifest

    return read_manifest(path)


def _find_cache(cfg: EvaluateConfig, size: int):
    """The image cache to read: --cache, else cache-<size> (the one training read), else the only
    cache present (its squares are then refit to `size`)."""
    from cxr.core.paths import DataPaths
    from cxr.imaging.cache import load_cache

    if cfg.cache is not None:
        return load_cache(cfg.cache)
    paths = DataPaths(cfg.data_root)
    exact = paths.cache(size)
    if exact.exists():
        return load_cache(exact)
    others = sorted(exact.parent.glob("cache-*")) if exact.parent.exists() else []
    if len(others) == 1:
        return load_cache(others[0])
    found = ", ".join(p.name for p in others) or "none"
    raise InputError(
        f"{exact}: no image cache of the size the checkpoint was trained from, {size} (found: {found}); "
        "run `cxr preprocess` or pass --cache"
    )


def _split_rows(manifest, split: str, labels: list[str]):
    import polars as pl

    missing = [c for c in ("dicom_id", "study_id", "split", *labels) if c not in manifest.columns]
    if missing:
        raise InputError(f"manifest lacks columns {missing}")
    return manifest.filter(pl.col("split") == split).sort("study_id", "dicom_id")


def _predict_split(model, pre, cache, rows, cfg: EvaluateConfig, description: str) -> np.ndarray:
    """Probabilities (n, L) for the manifest rows, in their order, from the cache."""
    from cxr.core.progress import make_progress
    from cxr.imaging.cache import rows_for
    from cxr.inference.runtime import predict_squares

    idx = rows_for(cache, rows["dicom_id"].to_list())
    n = len(idx)

    def batches():
        for start in range(0, n, cfg.batch_size):
            block = np.asarray(cache.images[idx[start : start + cfg.batch_size]])
            if cache.size != pre.square_size:  # another cache: refit its squares
                block = np.stack([pre.square(im) for im in block])
            yield block

    out = []
    with make_progress() as progress:
        task = progress.add_task(description, total=n)
        for probs in predict_squares(model, pre, batches(), cfg.device):
            out.append(probs)
            progress.advance(task, len(probs))
    return np.concatenate(out)


def _usable_rows(rows, cache):
    """Rows whose image is in the cache and decoded; the others are counted and left out."""
    import polars as pl

    ok = cache.index.filter(pl.col("ok")).select("dicom_id")
    kept = rows.join(ok, on="dicom_id", how="semi").sort("study_id", "dicom_id")
    return kept, rows.height - kept.height


def _counts(rows, excluded: int) -> dict[str, int]:
    counts = {
        "images": rows.height,
        "studies": rows["study_id"].n_unique(),
        "images_excluded_unreadable": excluded,
    }
    if "subject_id" in rows.columns:  # a count only; ids never leave data/
        counts["patients"] = rows["subject_id"].n_unique()
    return counts


def _level_view(rows, probs: np.ndarray, labels: list[str], level: str):
    """(predictions frame, raw labels (n, L), groups for the bootstrap) at the chosen level."""
    import polars as pl

    pred = pl.DataFrame(
        {"dicom_id": rows["dicom_id"], "study_id": rows["study_id"]}
        | {lab: probs[:, j] for j, lab in enumerate(labels)}
    )
    if level == "image":
        raw = rows.select(labels).to_numpy().astype(np.float64)
        return pred, raw, rows["study_id"].to_numpy()
    studies = aggregate_studies(pred, labels)
    # Labels are per study in MIMIC-CXR: every image of a study carries the same row.
    first = rows.group_by("study_id", maintain_order=True).first().sort("study_id")
    raw = first.select(labels).to_numpy().astype(np.float64)
    return studies, raw, None


# --------------------------------------------------------------------------- the run


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the evaluation and write every output; returns the metrics dict (as in metrics.json)."""
    from cxr.core.paths import DataPaths
    from cxr.inference.runtime import load_model

    if cfg.level not in ("study", "image"):
        raise CxrError(f"--level must be study or image, got {cfg.level!r}")
    model, ckpt, pre = load_model(cfg.checkpoint, cfg.device)
    labels = list(ckpt["labels"])
    policy = dict(ckpt.get("label_policy") or {"uncertain": "ignore", "missing": "zeros"})
    manifest_path = cfg.manifest or DataPaths(cfg.data_root).manifest
    manifest = _read_manifest(manifest_path)
    cache = _find_cache(cfg, pre.square_size)

    results = {}
    for split in dict.fromkeys(("validate", cfg.split)):
        rows, excluded = _usable_rows(_split_rows(manifest, split, labels), cache)
        if rows.height == 0:
            raise InputError(f"{manifest_path}: no usable {split} images in the manifest and cache")
        probs = _predict_split(model, pre, cache, rows, cfg, f"predict {split}")
        results[split] = (rows, excluded, probs)

    val_rows, _, val_probs = results["validate"]
    val_pred, val_raw, _ = _level_view(val_rows, val_probs, labels, cfg.level)
    thresholds = choose_thresholds(
        eval_targets(val_raw), val_pred.select(labels).to_numpy(), labels
    )
    rows, excluded, probs = results[cfg.split]
    pred, raw, groups = _level_view(rows, probs, labels, cfg.level)
    y = eval_targets(raw)
    p = pred.select(labels).to_numpy().astype(np.float64)
    table = compute_metrics(
        y, p, labels, thresholds, groups, MetricsConfig(n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    )
    rule = THRESHOLD_RULE + (
        " (note: thresholds chosen and applied on the same split)"
        if cfg.split == "validate"
        else ""
    )
    note = {"test": SPLIT_NOTE, "validate": SAME_SPLIT_NOTE}.get(cfg.split)
    metrics = {
        "split": cfg.split,
        "level": cfg.level,
        "checkpoint": str(cfg.checkpoint),
        "arch": ckpt.get("arch"),
        "epoch": ckpt.get("epoch"),
        "image_size": pre.image_size,
        "label_policy": policy,
        "evaluation_masks": "uncertain (-1) excluded for every label; blank excluded where missing=ignore, else 0",
        "threshold_rule": rule,
        "bootstrap": {
            "n": cfg.n_bootstrap,
            "seed": cfg.seed,
            "resampled_unit": "study",
            "interval": "95% percentile",
        },
        "ece_bins": 15,
        "counts": {
            cfg.split: _counts(rows, excluded),
            **(
                {"validate": _counts(val_rows, results["validate"][1])}
                if cfg.split != "validate"
                else {}
            ),
        },
        "note": note,
        **table,
    }
    # The contract: each label's figures under its exact name at the top level; the same
    # entries also stay in metrics["labels"] (in output order, beside "macro" and "micro").
    clash = [label for label in labels if label in metrics]
    if clash:
        raise CxrError(f"label names {clash} clash with metrics.json keys")
    metrics.update({label: table["labels"][label] for label in labels})
    out = cfg.out_dir()
    _write_outputs(out, cfg, ckpt, metrics, labels, rows, probs, pred, y, p)
    figures = _write_figures(out / "figures", labels, y, p)
    gallery = _gallery(model, pre, cache, manifest, rows, pred, y, p, labels, thresholds, cfg)
    _write_html(out / "report.html", metrics, ckpt, figures, gallery)
    return metrics


def _write_outputs(out: Path, cfg, ckpt, metrics, labels, rows, probs, pred, y, p) -> None:
    import polars as pl

    from cxr.core.atomic import atomic_path, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    # predictions.csv is always per image (the contract: dicom_id, study_id, one column per label);
    # at study level the aggregated probabilities that the metrics used go to predictions_study.csv.
    per_image = pl.DataFrame(
        {"dicom_id": rows["dicom_id"], "study_id": rows["study_id"]}
        | {lab: probs[:, j] for j, lab in enumerate(labels)}
    )
    with atomic_path(out / "predictions.csv") as tmp:
        per_image.write_csv(tmp, float_precision=6)
    if cfg.level == "study":
        with atomic_path(out / "predictions_study.csv") as tmp:
            pred.select("study_id", *labels).write_csv(tmp, float_precision=6)


# --------------------------------------------------------------------------- figures


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


def _write_figures(
    fig_dir: Path, labels: list[str], y: np.ndarray, p: np.ndarray
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
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.8 * nrows), squeeze=False)
        for ax in axes.ravel()[len(labels) :]:
            ax.axis("off")
        for j, label in enumerate(labels):
            ax = axes.ravel()[j]
            keep = ~np.isnan(y[:, j])
            yj, pj = y[keep, j], p[keep, j]
            ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=7)
            if yj.size == 0 or yj.min() == yj.max():
                ax.text(
                    0.5, 0.5, "not evaluable\n(one class)", ha="center", va="center", fontsize=8
                )
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(yj, pj)
                ax.plot(fpr, tpr, lw=1.5)
                ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
                ax.set_xlabel("1 - specificity", fontsize=7)
                ax.set_ylabel("sensitivity", fontsize=7)
            else:
                prec, rec, _ = precision_recall_curve(yj, pj)
                ax.plot(rec, prec, lw=1.5)
                ax.axhline(yj.mean(), ls="--", color="grey", lw=0.8)
                ax.set_xlabel("recall", fontsize=7)
                ax.set_ylabel("precision", fontsize=7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
        fig.suptitle(
            "ROC curves" if kind == "roc" else "Precision-recall curves (dashed: prevalence)"
        )
        fig.tight_layout()
        figures[kind] = _png_bytes(fig)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    keep = ~np.isnan(y)
    bins = reliability_bins(y[keep], p[keep], 15)
    mp, fr = np.array(bins["mean_p"], float), np.array(bins["freq"], float)
    ok = np.array(bins["count"]) > 0
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect calibration")
    ax.plot(mp[ok], fr[ok], "o-", label="all labels pooled")
    ax.set_xlabel("mean predicted probability (15 equal-width bins)")
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


def _gallery(model, pre, cache, manifest, rows, pred, y, p, labels, thresholds, cfg) -> list[dict]:
    """The most confident errors: false positives with the highest probability and false
    negatives with the lowest, over all labels, each with a thumbnail, a Grad-CAM overlay of its
    label and the report's impression. At study level the study's first image is shown."""
    import polars as pl

    from cxr.imaging.cache import rows_for
    from cxr.inference.explain import grad_cam, overlay

    fps, fns = [], []
    for j, label in enumerate(labels):
        t = thresholds[label]["threshold"]
        for i in np.flatnonzero((y[:, j] == 0) & (p[:, j] >= t)):
            fps.append((float(p[i, j]), int(i), j))
        for i in np.flatnonzero((y[:, j] == 1) & (p[:, j] < t)):
            fns.append((float(p[i, j]), int(i), j))
    fps = sorted(fps, key=lambda e: -e[0])[: cfg.gallery_size]
    fns = sorted(fns, key=lambda e: e[0])[: cfg.gallery_size]

    items = []
    for kind, entries in (("false positive", fps), ("false negative", fns)):
        for prob, i, j in entries:
            study_id = int(pred["study_id"][i])
            if "dicom_id" in pred.columns:
                dicom_id = str(pred["dicom_id"][i])
            else:
                dicom_id = str(rows.filter(pl.col("study_id") == study_id)["dicom_id"][0])
            square = pre.square(np.asarray(cache.images[rows_for(cache, [dicom_id])[0]]))
            heat = grad_cam(model, pre.tensor(square[None]).to(cfg.device), j)
            heading, text = _report_excerpt(manifest, dicom_id)
            items.append(
                {
                    "kind": kind,
                    "label": labels[j],
                    "probability": prob,
                    "threshold": thresholds[labels[j]]["threshold"],
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


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1f24;
background:#fff;max-width:1400px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#f3f5f7} td:first-child,th:first-child{text-align:left}
tr.avg td{font-weight:600;background:#fafafa}
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
    return html.escape(str(v))


def metric_rows(metrics: dict) -> list[list[str]]:
    """The table shown in the terminal and the HTML page: one row per label, then macro and micro."""
    out = []
    for label, m in metrics["labels"].items():
        ci = m.get("auroc_ci")
        auroc = _fmt(m["auroc"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        if m.get("reason"):
            auroc = f"— ({m['reason']})"
        out.append(
            [
                label,
                str(m["n_pos"]),
                str(m["n_neg"]),
                _fmt(m["prevalence"]),
                auroc,
                _fmt(m["auprc"]),
                _fmt(m["threshold"]),
                _fmt(m["sensitivity"]),
                _fmt(m["specificity"]),
                _fmt(m["ppv"]),
                _fmt(m["f1"]),
                _fmt(m["ece"]),
                _fmt(m["brier"]),
            ]
        )
    for name in ("macro", "micro"):
        a = metrics[name]
        out.append(
            [
                f"{name} ({a['n_labels']} labels)",
                "",
                "",
                "",
                _fmt(a["auroc"]),
                _fmt(a["auprc"]),
                "",
                _fmt(a["sensitivity"]),
                _fmt(a["specificity"]),
                _fmt(a["ppv"]),
                _fmt(a["f1"]),
                _fmt(a["ece"]),
                _fmt(a["brier"]),
            ]
        )
    return out


TABLE_HEADER = [
    "label",
    "pos",
    "neg",
    "prev.",
    "AUROC [95% CI]",
    "AUPRC",
    "thr.",
    "sens.",
    "spec.",
    "PPV",
    "F1",
    "ECE",
    "Brier",
]


def policy_text(policy: dict) -> str:
    text = f"uncertain={policy.get('uncertain')}, missing={policy.get('missing')}"
    overrides = policy.get("overrides") or {}
    if overrides:
        text += "; overrides: " + "; ".join(
            f"{k}: " + ", ".join(f"{a}={b}" for a, b in dict(v).items())
            for k, v in overrides.items()
        )
    return text


def _write_html(
    path: Path, metrics: dict, ckpt: dict, figures: dict[str, bytes], gallery: list[dict]
) -> None:
    from cxr.core.atomic import write_text_atomic

    def img(data: bytes, alt: str) -> str:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return f'<img class="fig" alt="{html.escape(alt)}" src="{uri}">'

    rows = metric_rows(metrics)
    n_labels = len(metrics["labels"])
    body = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER) + "</tr>"]
    for k, r in enumerate(rows):
        cls = ' class="avg"' if k >= n_labels else ""
        body.append(
            f"<tr{cls}>" + "".join(f"<td>{html.escape(c) if c else ''}</td>" for c in r) + "</tr>"
        )
    counts_rows = "".join(
        f"<tr><td>{html.escape(split)}</td>"
        + "".join(f"<td>{v}</td>" for v in c.values())
        + "</tr>"
        for split, c in metrics["counts"].items()
    )
    counts_head = "".join(
        f"<th>{html.escape(k)}</th>" for k in next(iter(metrics["counts"].values()))
    )
    cards = []
    for g in gallery:
        cls = "fp" if g["kind"] == "false positive" else "fn"
        cards.append(
            f'<div class="card"><div class="{cls}"><b>{html.escape(g["kind"])}</b>: '
            f"{html.escape(g['label'])} p={g['probability']:.3f} (thr. {g['threshold']:.3f})</div>"
            f'<div class="muted">study {g["study_id"]} · image {html.escape(g["dicom_id"])}</div>'
            f'<img alt="thumbnail" src="{g["thumbnail"]}"><img alt="Grad-CAM" src="{g["heatmap"]}">'
            f"<div><b>{html.escape(g['report_heading'])}:</b> {html.escape(g['impression'])}</div></div>"
        )
    config = {
        "arch": ckpt.get("arch"),
        "epoch": ckpt.get("epoch"),
        "image_size": ckpt.get("image_size"),
        "normalization": ckpt.get("normalization"),
        "cxr_version": ckpt.get("cxr_version"),
        "config": ckpt.get("config"),
    }
    note = f'<p class="note">{html.escape(metrics["note"])}</p>' if metrics.get("note") else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cxr evaluation: {html.escape(metrics["split"])}</title>
<style>{_CSS}</style></head><body>
<h1>cxr evaluation — {html.escape(metrics["split"])} split, {html.escape(metrics["level"])} level</h1>
<p class="muted">checkpoint {html.escape(str(metrics["checkpoint"]))} · {html.escape(str(metrics["arch"]))},
epoch {html.escape(str(metrics["epoch"]))}, image size {metrics["image_size"]}</p>
{note}
<h2>Label policy</h2>
<p>{html.escape(policy_text(metrics["label_policy"]))}. {html.escape(metrics["evaluation_masks"])}.</p>
<p><b>Threshold rule:</b> {html.escape(metrics["threshold_rule"])}.
<b>AUROC interval:</b> 95% percentile bootstrap, {metrics["bootstrap"]["n"]} resamples of studies,
seed {metrics["bootstrap"]["seed"]}. <b>ECE:</b> 15 equal-width bins.</p>
<h2>Dataset</h2>
<table><tr><th>split</th>{counts_head}</tr>{counts_rows}</table>
<h2>Metrics</h2>
<table>{"".join(body)}</table>
<p class="muted">Macro: mean over labels with both classes. Micro: the evaluated (label, {html.escape(metrics["level"])})
pairs of those labels pooled, each label's decisions at its own threshold.</p>
<h2>ROC curves</h2>{img(figures["roc"], "ROC curves")}
<h2>Precision-recall curves</h2>{img(figures["pr"], "PR curves")}
<h2>Calibration</h2>{img(figures["reliability"], "reliability diagram")}
<h2>Most confident errors</h2>
<p class="muted">False positives with the highest probability and false negatives with the lowest,
over all labels; left the image as the model saw it, right its Grad-CAM for the label.</p>
<div class="gallery">{"".join(cards) or "<p>No errors at the chosen thresholds.</p>"}</div>
<h2>Run configuration</h2>
<pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>
</body></html>
"""
    write_text_atomic(path, page)

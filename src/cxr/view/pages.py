"""Server-rendered HTML of `cxr view` (plain strings, every value escaped; no template engine).

Pages show studies by study_id and images by dicom_id only: no path, no subject_id.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any
from urllib.parse import urlencode

from cxr.view.data import OUTCOMES, SOURCE_NAMES, ViewData
from cxr.view.filters import AGREEMENTS, Page, Query

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:baseline}
header a{color:#cfe3ff}header small{color:#aab}
main{padding:12px 16px}
form.filters{display:flex;flex-wrap:wrap;gap:8px 14px;align-items:end;background:#fff;
 padding:10px;border:1px solid #dde;border-radius:6px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#556}
table{border-collapse:collapse;background:#fff;margin-top:10px}
th,td{border:1px solid #dde;padding:3px 7px;text-align:left;font-variant-numeric:tabular-nums}
th{background:#eef1f5;font-weight:600}
.TP,.TN{color:#176b2c}.FP,.FN{color:#b3261e;font-weight:600}
.dis{background:#fff3cd}.muted{color:#889}
.error{background:#fde8e8;border:1px solid #e5a4a4;padding:8px;border-radius:6px}
.images{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:1px solid #dde;padding:6px;border-radius:6px}
.frame{width:384px;height:384px;overflow:auto;background:#000}
.frame img{width:100%;display:block;image-rendering:auto}
figcaption{font-size:12px;color:#556;margin-top:4px}
.cols{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.report{background:#fff;border:1px solid #dde;padding:8px 12px;border-radius:6px;max-width:640px}
.report h3{font-size:12px;text-transform:uppercase;color:#556;margin:10px 0 2px}
.report p{margin:0;white-space:pre-wrap}
mark.labeler{background:#ffe58a}
button{cursor:pointer}#status{margin:6px 0;color:#556}
"""


def _page(title: str, body: str, script: bool = False) -> str:
    js = '<script src="/app.js"></script>' if script else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<header><b><a href="/">cxr view</a></b><small>local and private: '
        f"studies by study_id, images by dicom_id</small></header><main>{body}</main>{js}"
        "</body></html>"
    )


def value_text(value: Any, covered: bool = True) -> str:
    if not covered:
        return "—"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "blank"
    return {1.0: "1", 0.0: "0", -1.0: "-1"}.get(float(value), str(value))


def _select(name: str, options: list[tuple[str, str]], current: str, label: str) -> str:
    opts = "".join(
        f'<option value="{escape(v)}"{" selected" if v == current else ""}>{escape(t)}</option>'
        for v, t in options
    )
    return f'<label>{escape(label)}<select name="{name}" id="f-{name}">{opts}</select></label>'


def _counted(options, counts: dict[str, int] | None) -> list[tuple[str, str]]:
    return [
        (v, f"{t} ({counts[v]})" if counts is not None and v in counts else t) for v, t in options
    ]


def filter_form(data: ViewData, q: Query, counts: dict[str, dict[str, int]]) -> str:
    splits = sorted(data.studies["split"].unique().to_list())
    parts = [
        _select(
            "split",
            [("", "all"), *_counted([(s, s) for s in splits], counts.get("split"))],
            q.split,
            "split",
        ),
        _select(
            "view",
            [("", "all"), *_counted([(v, v) for v in data.views], counts.get("view"))],
            q.view,
            "view",
        ),
        _select("label", [("", "any")] + [(lab, lab) for lab in data.labels], q.label, "label"),
        _select("source", [(s, SOURCE_NAMES[s]) for s in data.sources], q.source, "label source"),
        _select(
            "value",
            [
                ("", "any"),
                *_counted(
                    [("1", "1"), ("0", "0"), ("-1", "-1"), ("blank", "blank")], counts.get("value")
                ),
            ],
            q.value,
            "label value",
        ),
    ]
    if len(data.sources) > 1:
        n = counts.get("disagree", {}).get("1")
        parts.append(
            _select(
                "disagree",
                [("", "either"), ("1", f"sources disagree ({n})")],
                q.disagree,
                "label sources",
            )
        )
    if data.evals:
        evals = [(str(e.index), e.name) for e in data.evals]
        parts.append(_select("eval", evals, str(q.eval), "evaluation"))
        parts.append(
            _select(
                "outcome",
                [("", "any"), *_counted([(o, o) for o in OUTCOMES], counts.get("outcome"))],
                q.outcome,
                "outcome at threshold",
            )
        )
        if len(data.evals) > 1:
            parts.append(_select("other", [("-1", "none"), *evals], str(q.other), "compare with"))
            names = {
                "same": "same prediction",
                "differ": "predictions differ",
                "a_right": "first right, second wrong",
                "b_right": "second right, first wrong",
            }
            parts.append(
                _select(
                    "agreement",
                    [("", "any")] + [(a, names[a]) for a in AGREEMENTS],
                    q.agreement,
                    "agreement",
                )
            )
        sorts = [
            ("study", "study id"),
            ("prob", "probability, highest first"),
            ("prob_asc", "probability, lowest first"),
            ("error", "error |target - p|, largest first"),
        ]
    else:
        sorts = [("study", "study id")]
    parts.append(_select("sort", sorts, q.sort, "sort"))
    parts.append('<button type=submit id="apply">Apply</button>')
    parts.append('<a href="/">reset</a>')
    return f'<form class=filters method=get action="/">{"".join(parts)}</form>'


def _fmt_p(p: Any) -> str:
    return "" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3f}"


def list_page(
    data: ViewData,
    q: Query,
    page: Page | None,
    counts: dict[str, dict[str, int]],
    error: str | None = None,
) -> str:
    body = [filter_form(data, q, counts)]
    if error:
        body.append(f'<p class=error id="query-error">{escape(error)}</p>')
        return _page("cxr view", "".join(body))
    assert page is not None
    params = q.params()
    export = "/export.csv" + ("?" + urlencode(params) if params else "")
    body.append(
        f'<p><b id="total">{page.total}</b> of {data.studies.height} studies match. '
        f"Page {page.page} of {page.pages}. "
        + (
            f'<a href="/?{urlencode(q.params(page=page.page - 1))}">previous</a> '
            if page.page > 1
            else ""
        )
        + (
            f'<a href="/?{urlencode(q.params(page=page.page + 1))}">next</a> '
            if page.page < page.pages
            else ""
        )
        + f'| <a href="{escape(export)}" id="export">export CSV (study_id, dicom_id)</a></p>'
    )
    head = ["study", "split", "views", "images"]
    if q.label:
        head += [f"{SOURCE_NAMES[s]}: {q.label}" for s in data.sources]
        for e in data.evals:
            if q.label in e.labels:
                t = e.thresholds.get(q.label)
                head.append(f"{e.name}: p (t={_fmt_p(t)})")
                head.append(f"{e.name}: outcome")
    elif len(data.sources) > 1:
        head.append("sources disagree on")
    rows = []
    link_params = urlencode(params)
    for r in page.rows.iter_rows(named=True):
        sid = r["study_id"]
        href = f"/study/{sid}" + (f"?{link_params}" if link_params else "")
        cells = [
            f'<a href="{escape(href)}" class=study>{sid}</a>',
            escape(r["split"]),
            escape("/".join(r["views"] or [])),
            str(r["n_images"]),
        ]
        if q.label:
            dis = r[f"disagree:{q.label}"]
            for s in data.sources:
                cls = ' class="dis"' if dis else ""
                cells.append(f"<span{cls}>{value_text(r[f'{s}:{q.label}'], r[f'has:{s}'])}</span>")
            for e in data.evals:
                if q.label in e.labels:
                    o = r[f"o{e.index}:{q.label}"] or ""
                    cells.append(_fmt_p(r[f"p{e.index}:{q.label}"]))
                    cells.append(f'<span class="{o}">{o}</span>')
        elif len(data.sources) > 1:
            cells.append(escape(", ".join(lab for lab in data.labels if r[f"disagree:{lab}"])))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body.append(
        '<table id="studies"><thead><tr>'
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return _page("cxr view: studies", "".join(body))


def _report_html(sections: dict[str, str], labeler_section: str | None) -> str:
    if not sections:
        return "<p class=muted>no report for this study</p>"
    out = []
    for name, text in sections.items():
        title = name.replace("_", " ")
        if name == labeler_section:
            title += " (the labeler's text)"
            body = f'<mark class=labeler id="labeler-text">{escape(text)}</mark>'
        else:
            body = escape(text)
        out.append(
            f'<section data-section="{escape(name)}"><h3>{escape(title)}</h3><p>{body}</p></section>'
        )
    return "".join(out)


def study_page(
    data: ViewData,
    row: dict[str, Any],
    images: list[tuple[str, str]],
    sections: dict[str, str],
    labeler_section: str | None,
    back: str,
    report_note: str = "",
) -> str:
    sid = row["study_id"]
    figs = []
    for dicom_id, view in images:
        d = escape(dicom_id)
        figs.append(
            f'<figure><div class=frame><img class=xray id="img-{d}" data-dicom="{d}" '
            f'src="/image/{d}/thumb" alt="image {d}"></div>'
            f"<figcaption>{escape(view or '')} {d}<br>"
            f'<button data-full="{d}">full resolution</button> '
            f'<button data-zoom="{d}" data-step="1.5">zoom +</button> '
            f'<button data-zoom="{d}" data-step="0.6667">zoom −</button> '
            f'<a href="/image/{d}/full" target=_blank>open</a></figcaption></figure>'
        )
    head = ["label", *[SOURCE_NAMES[s] for s in data.sources]]
    for e in data.evals:
        head += [f"{e.name}: p", "threshold", "outcome", "heatmap"]
    rows = []
    for j, lab in enumerate(data.labels):
        dis = row[f"disagree:{lab}"]
        cells = [escape(lab)]
        for s in data.sources:
            cells.append(value_text(row[f"{s}:{lab}"], row[f"has:{s}"]))
        for e in data.evals:
            if lab not in e.labels:
                cells += ["", "", "", ""]
                continue
            p = row[f"p{e.index}:{lab}"]
            o = row[f"o{e.index}:{lab}"] or ""
            t = e.thresholds.get(lab)
            li = e.labels.index(lab)
            cells += [
                f'<span class=prob data-eval="{e.index}" data-label="{escape(lab)}">{_fmt_p(p)}</span>',
                _fmt_p(t),
                f'<span class="{o}">{o}</span>',
                f'<button data-heatmap="{e.index}/{li}" data-name="{escape(lab)} ({escape(e.name)})">'
                "show</button>",
            ]
        cls = ' class="dis"' if dis else ""
        rows.append(f"<tr{cls} data-row={j}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    evals_note = "".join(
        f"<li>{escape(e.name)}: {escape(e.describe())}; threshold: Youden's on validate</li>"
        for e in data.evals
    )
    body = (
        f'<p><a href="{escape(back)}" id="back">back to the list</a></p>'
        f"<h2>study {sid} <small class=muted>{escape(row['split'])}, {row['n_images']} image(s)"
        "</small></h2>"
        "<div class=cols><div>"
        f"<div class=images>{''.join(figs)}</div>"
        '<p id="status">showing the images; "show" in a label row overlays its heatmap '
        '<button id="plain">plain images</button></p></div>'
        f'<div class=report id="report"><h2>report</h2>{report_note}'
        f"{_report_html(sections, labeler_section)}</div></div>"
        '<table id="labels"><thead><tr>'
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + (f"<ul class=muted>{evals_note}</ul>" if evals_note else "")
        + "<p class=muted>highlighted rows: the label sources disagree (blank read as 0)</p>"
    )
    return _page(f"cxr view: study {sid}", body, script=True)


APP_JS = r"""
"use strict";
const status = document.getElementById("status");
function images() { return document.querySelectorAll("img.xray"); }
function say(text) { status.firstChild.textContent = text + " "; }
async function showHeatmaps(spec, name) {
  say("computing heatmap: " + name + " ...");
  for (const img of images()) {
    const r = await fetch("/heatmap/" + spec.split("/")[0] + "/" + img.dataset.dicom + "/" +
                          spec.split("/")[1]);
    if (!r.ok) { say("heatmap not available: " + (await r.text())); return; }
    const url = URL.createObjectURL(await r.blob());
    img.onload = () => URL.revokeObjectURL(url);
    img.src = url;
    img.dataset.heatmap = spec;
  }
  say("heatmap: " + name);
}
document.addEventListener("click", (ev) => {
  const t = ev.target;
  if (t.dataset.heatmap) { showHeatmaps(t.dataset.heatmap, t.dataset.name); return; }
  if (t.id === "plain") {
    for (const img of images()) { img.src = "/image/" + img.dataset.dicom + "/thumb";
                                  delete img.dataset.heatmap; }
    say("showing the images");
    return;
  }
  if (t.dataset.full) {
    const img = document.getElementById("img-" + t.dataset.full);
    img.src = "/image/" + t.dataset.full + "/full"; delete img.dataset.heatmap; return;
  }
  if (t.dataset.zoom) {
    const img = document.getElementById("img-" + t.dataset.zoom);
    const z = Math.min(8, Math.max(1, (parseFloat(img.dataset.z) || 1) * parseFloat(t.dataset.step)));
    img.dataset.z = z; img.style.width = (100 * z) + "%";
  }
});
for (const img of images()) {
  img.parentElement.addEventListener("wheel", (ev) => {
    if (!ev.ctrlKey) return;
    ev.preventDefault();
    const z = Math.min(8, Math.max(1, (parseFloat(img.dataset.z) || 1) * (ev.deltaY < 0 ? 1.25 : 0.8)));
    img.dataset.z = z; img.style.width = (100 * z) + "%";
  }, {passive: false});
}
"""

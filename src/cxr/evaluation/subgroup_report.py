"""The subgroup analysis as the report shows it: printed lines, an HTML section, forest plots and
the underdiagnosis chart, all drawn from metrics.json's `subgroups` and `subgroup_gaps` alone.

Only shown cells have figures in metrics.json (`cxr.evaluation.subgroups` nulls every number of a
cell under the minimum before anything is written), so nothing here can draw or print a
suppressed cell's numbers: a suppressed value appears by name, marked suppressed.
"""

from __future__ import annotations

import html
import textwrap
from typing import Any

SUPPRESSED = "suppressed"
# The AP/PA caveat, said wherever view_position is a subgroup.
VIEW_CAVEAT = (
    "View is not a neutral attribute: AP films are mostly portable films of patients too sick to "
    "stand, taken on other machines, so an AP-PA gap mixes image geometry, equipment and how ill "
    "the patients are; it does not isolate the effect of the view."
)


def _fmt(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _with_ci(value: Any, ci: Any) -> str:
    return "—" if value is None else f"{value:.3f} {_ci(ci)}".rstrip()


def _suppressed_text(min_cell: int) -> str:
    return f"{SUPPRESSED} (fewer than {min_cell} patients)"


def _gap_text(gap: dict | None, what: str) -> str:
    if not gap:
        return ""
    return f"{what} {gap['gap']:.3f} {_ci(gap['ci'])} ({gap['higher']} > {gap['lower']})".replace(
        "  ", " "
    )


def largest_gaps(gaps: dict) -> list[str]:
    """The attribute's largest underdiagnosis gap and its largest AUROC gap, as text."""
    from cxr.evaluation.subgroups import largest_auroc_gap

    out = []
    if gaps.get("underdiagnosis"):
        out.append(_gap_text(gaps["underdiagnosis"], "underdiagnosis"))
    found = largest_auroc_gap(gaps)
    if found:
        label, gap = found
        out.append(_gap_text(gap, f"AUROC {label}"))
    return out


def subgroup_lines(metrics: dict) -> list[str]:
    """The printed summary: per attribute, each value's counts and underdiagnosis rate (or
    suppressed), then its largest gaps. Empty without a subgroup analysis."""
    subgroups = metrics.get("subgroups")
    if not subgroups:
        return []
    options = metrics.get("subgroup_options") or {}
    min_cell = options.get("min_cell")
    lines = [
        f"subgroups (cells under {min_cell} patients suppressed; TPR, FPR and underdiagnosis "
        "at Youden thresholds chosen on validate; details in the report)"
    ]
    width = max(14, *(len(v) for values in subgroups.values() for v in values))
    for attribute, values in subgroups.items():
        lines.append(
            f"{attribute:<{width + 2}} {'patients':>8} {'studies':>8}  underdiagnosis [95% CI]"
        )
        for value, e in values.items():
            if e["suppressed"]:
                lines.append(f"  {value:<{width}} {_suppressed_text(min_cell)}")
                continue
            u = e.get("underdiagnosis") or {}
            lines.append(
                f"  {value:<{width}} {e['patients']:>8} {e['studies']:>8}  "
                f"{_with_ci(u.get('rate'), u.get('ci'))}"
            )
        gaps = largest_gaps((metrics.get("subgroup_gaps") or {}).get(attribute) or {})
        if gaps:
            lines.append("  largest gaps: " + "; ".join(gaps))
    return lines


# --------------------------------------------------------------------------- figures


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def forest_plot(attribute: str, values: dict, labels: list[str], min_cell: int) -> bytes:
    """AUROC with its interval per label (rows) and shown value (colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr.evaluation.report import _png_bytes

    shown = [v for v, e in values.items() if not e["suppressed"]]
    hidden = [v for v, e in values.items() if e["suppressed"]]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(labels) + 1.6), layout="constrained")
    step = 0.7 / max(1, len(shown))
    lows = []
    for k, (value, color) in enumerate(zip(shown, _colors(len(shown)), strict=True)):
        ys, xs = [], []
        for i, label in enumerate(labels):
            m = values[value]["labels"].get(label) or {}
            if m.get("auroc") is None:
                continue
            y = i - 0.35 + step * (k + 0.5)
            ys.append(y)
            xs.append(m["auroc"])
            # A percentile interval need not contain its point estimate (a tiny subgroup):
            # the interval is drawn as a line of its own, never as errors around the point.
            ci = m.get("auroc_ci")
            if ci:
                ax.hlines(y, ci[0], ci[1], color=color, lw=1.2)
                lows.append(ci[0])
            lows.append(m["auroc"])
        n = values[value]["patients"]
        ax.plot(xs, ys, "o", ms=4, color=color, label=f"{value} ({n} patients)")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(max(0.0, min(lows, default=0.5) - 0.02), 1.005)
    ax.axvline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("AUROC (95% patient-bootstrap interval)")
    title = f"AUROC by {attribute}"
    if hidden:
        title += "\n" + textwrap.fill(f"{', '.join(hidden)}: {_suppressed_text(min_cell)}", 90)
    ax.set_title(title, fontsize=10)
    if not shown:
        ax.text(0.5, 0.5, "every value suppressed", transform=ax.transAxes, ha="center")
    ax.grid(axis="x", lw=0.4, alpha=0.5)
    if shown:
        ax.legend(fontsize=7, loc="lower left")
    data = _png_bytes(fig)
    plt.close(fig)
    return data


def underdiagnosis_chart(subgroups: dict, min_cell: int) -> bytes:
    """One panel per attribute: each shown value's underdiagnosis rate with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr.evaluation.report import _png_bytes

    attrs = list(subgroups)
    fig, axes = plt.subplots(
        1, len(attrs), figsize=(3.3 * len(attrs), 3.2), squeeze=False, layout="constrained"
    )
    for ax, attribute in zip(axes[0], attrs, strict=True):
        values = subgroups[attribute]
        names, rates, highest = [], [], 0.0
        for value, e in values.items():
            rate = None if e["suppressed"] else (e.get("underdiagnosis") or {}).get("rate")
            if rate is None:
                continue
            ci = e["underdiagnosis"].get("ci")
            if ci:
                ax.hlines(len(names), ci[0], ci[1], color="#b3261e", lw=1.5)
                highest = max(highest, ci[1])
            highest = max(highest, rate)
            names.append(value)
            rates.append(rate)
        ax.plot(rates, range(len(names)), "o", color="#b3261e", ms=5)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(-0.6, max(len(names), 1) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, max(highest, 0.05) * 1.15))
        ax.tick_params(axis="x", labelsize=7)
        hidden = sum(e["suppressed"] for e in values.values())
        title = attribute + (f"\n({hidden} suppressed)" if hidden else "")
        ax.set_title(title, fontsize=9)
        if not names:
            ax.text(0.5, 0.5, "every value\nsuppressed", transform=ax.transAxes, ha="center")
        ax.grid(axis="x", lw=0.4, alpha=0.5)
    fig.supxlabel(
        "underdiagnosis rate: studies with a finding called No Finding (95% interval)", fontsize=9
    )
    data = _png_bytes(fig)
    plt.close(fig)
    return data


def write_subgroup_figures(fig_dir, metrics: dict, labels: list[str]) -> dict[str, bytes]:
    """figures/underdiagnosis.png and figures/subgroups_<attribute>.png (atomically); returns
    `{name: png}`, empty without a subgroup analysis."""
    from cxr.core.atomic import write_bytes_atomic

    subgroups = metrics.get("subgroups")
    if not subgroups:
        return {}
    min_cell = (metrics.get("subgroup_options") or {}).get("min_cell")
    out = {"underdiagnosis": underdiagnosis_chart(subgroups, min_cell)}
    for attribute, values in subgroups.items():
        out[f"subgroups_{attribute}"] = forest_plot(attribute, values, labels, min_cell)
    for name, data in out.items():
        write_bytes_atomic(fig_dir / f"{name}.png", data)
    return out


# --------------------------------------------------------------------------- HTML


def _td(text: str) -> str:
    return f"<td>{html.escape(text)}</td>"


def _counts_table(attribute: str, values: dict, min_cell: int) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (html.escape(attribute), "patients", "studies", "underdiagnosis [95% CI]")
    )
    rows = [f"<tr>{head}</tr>"]
    for value, e in values.items():
        if e["suppressed"]:
            rows.append(
                f'<tr class="suppressed">{_td(value)}'
                f'<td colspan="3">{html.escape(_suppressed_text(min_cell))}</td></tr>'
            )
            continue
        u = e.get("underdiagnosis") or {}
        rows.append(
            f'<tr class="shown">{_td(value)}{_td(str(e["patients"]))}{_td(str(e["studies"]))}'
            f"{_td(_with_ci(u.get('rate'), u.get('ci')))}</tr>"
        )
    return "<table class=subgroup>" + "".join(rows) + "</table>"


def _labels_table(values: dict, labels: list[str]) -> str:
    shown = [v for v, e in values.items() if not e["suppressed"]]
    if not shown:
        return ""
    head = "<th>label</th>" + "".join(
        f"<th>{html.escape(v)}: AUROC [95% CI] · TPR · FPR</th>" for v in shown
    )
    rows = [f"<tr>{head}</tr>"]
    for label in labels:
        cells = []
        for v in shown:
            m = values[v]["labels"].get(label) or {}
            cells.append(
                _td(
                    f"{_with_ci(m.get('auroc'), m.get('auroc_ci'))} · "
                    f"{_fmt(m.get('tpr'))} · {_fmt(m.get('fpr'))}"
                )
            )
        rows.append(f"<tr>{_td(label)}{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def subgroup_section(metrics: dict, labels: list[str], figures: dict[str, bytes], img) -> str:
    """The report's "Subgroups" section (empty without a subgroup analysis). `figures` as
    `write_subgroup_figures` returns them; `img(png, alt)` turns a figure into an <img> tag."""
    subgroups = metrics.get("subgroups")
    if not subgroups:
        return ""
    options = metrics.get("subgroup_options") or {}
    min_cell = options.get("min_cell")
    gaps_all = metrics.get("subgroup_gaps") or {}
    parts = [
        "<h2>Subgroups: who does the model fail?</h2>",
        "<p>Each subgroup holds the evaluated units whose attribute has that value (missing "
        "values are Unknown). AUROC per label with its patient-bootstrap interval; TPR and FPR "
        "at each label's Youden threshold chosen on validate; <b>underdiagnosis</b>: "
        f"{html.escape(options.get('underdiagnosis', ''))}. Intervals come from the resamples "
        "of the overall figures, each subgroup's figure taken on its rows of each resample. "
        f"A subgroup with fewer than {min_cell} patients is suppressed: no figure of it appears "
        "anywhere in this evaluation's outputs.</p>",
    ]
    if "view_position" in subgroups:
        parts.append(f'<p class="note">{html.escape(VIEW_CAVEAT)}</p>')
    if "underdiagnosis" in figures:
        parts.append(img(figures["underdiagnosis"], "underdiagnosis by subgroup"))
    for attribute, values in subgroups.items():
        parts.append(f"<h3>{html.escape(attribute)}</h3>")
        parts.append(_counts_table(attribute, values, min_cell))
        gaps = largest_gaps(gaps_all.get(attribute) or {})
        if gaps:
            parts.append(
                "<p><b>Largest gaps</b> (higher minus lower, 95% interval from the same "
                "resamples): " + html.escape("; ".join(gaps)) + "</p>"
            )
        key = f"subgroups_{attribute}"
        if key in figures:
            parts.append(img(figures[key], f"AUROC by {attribute}"))
        parts.append(_labels_table(values, labels))
    return "\n".join(parts)

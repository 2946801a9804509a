"""Printed summaries of stage outputs (counts only: never an identifier of a patient)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from cxr.core.progress import console, is_quiet
from cxr.mimic import schema


def print_manifest_summary(info: dict, out: Path) -> None:
    if is_quiet():
        return
    out_console = console()
    counts = info["counts"]
    t = Table(title=f"manifest: {out}", title_justify="left")
    for col in ("split", "images", "studies", "patients"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split in (*schema.SPLITS, "total"):
        c = counts[split]
        t.add_row(split, str(c["images"]), str(c["studies"]), str(c["patients"]))
    out_console.print(t)
    views = ", ".join(f"{v} {n}" for v, n in info["views"].items())
    out_console.print(
        f"views: {views}"
        + (f" ({info['views_inferred']} inferred)" if info["views_inferred"] else "")
    )
    if info["exclusions"]:
        out_console.print("excluded:")
        for reason, c in info["exclusions"].items():
            out_console.print(f"  {reason}: {c['images']} images, {c['studies']} studies")
    unused = info.get("label_rows_without_images", 0)
    if unused:
        out_console.print(f"label rows without images in the split file: {unused} (unused)")
    n_studies = counts["total"]["studies"]
    out_console.print(f"reports found: {info['reports_found']} of {n_studies} studies")
    for note in info["notes"]:
        out_console.print(f"note: {note}")
    negbio = info.get("negbio")
    if negbio:
        out_console.print(
            f"NegBio labels: {negbio['studies_labelled']} studies"
            + (
                f" ({negbio['studies_without_row']} without a NegBio row)"
                if negbio["studies_without_row"]
                else ""
            )
        )
    for line in demographics_lines(info.get("demographics")):
        out_console.print(line)

    # Prevalence over the selected studies: share of 1 / 0 / -1 / blank per label, and the train vs
    # test positive rate (the test split is enriched for abnormal studies).
    t = Table(title="labels (share of studies)", title_justify="left")
    for col in ("label", "1", "0", "-1", "blank", "train 1", "test 1"):
        t.add_column(col, justify="left" if col == "label" else "right", no_wrap=True)
    per_split = info["labels"]
    for label in schema.LABELS:
        tot = {
            k: sum(per_split[s][label][k] for s in schema.SPLITS) for k in ("1", "0", "-1", "blank")
        }
        n = sum(tot.values()) or 1

        def pos_rate(split: str, label: str = label) -> str:
            c = per_split[split][label]
            m = sum(c.values())
            return f"{100 * c['1'] / m:.1f}%" if m else "-"

        t.add_row(
            label,
            *(f"{100 * tot[k] / n:.1f}%" for k in ("1", "0", "-1", "blank")),
            pos_rate("train"),
            pos_rate("test"),
        )
    out_console.print(t)


def demographics_lines(demo: dict | None) -> list[str]:
    """The demographics part of the summary: counts of patients, never a patient."""
    if not demo:
        return []
    lines = [
        f"demographics: MIMIC-IV {demo['mimic_iv_version']}, {demo['patients']} patients; "
        f"{demo['absent_from_mimic_iv']} absent from MIMIC-IV (all Unknown), "
        f"{demo['without_admissions']} without an admission (race and insurance Unknown), "
        f"{demo['race_unknown']} with race Unknown"
    ]
    if demo.get("undated_studies"):
        lines.append(f"  {demo['undated_studies']} studies without a readable StudyDate")
    if demo.get("implausible_ages"):
        lines.append(f"  {demo['implausible_ages']} studies with an age outside 0-130 (Unknown)")
    unlisted = demo.get("unlisted_race_values") or {}
    if unlisted:
        shown = ", ".join(f"{v!r} ({n})" for v, n in list(unlisted.items())[:10])
        more = f" and {len(unlisted) - 10} more" if len(unlisted) > 10 else ""
        lines.append(
            f"  race values not in the mapping, counted as Unknown (admissions): {shown}{more}"
        )
    return lines

"""Radiology reports: find them, read them safely, and split them into named sections.

The sectioning follows the official MIT-LCP/mimic-cxr `txt/section_parser.py` where it is right
(the CheXpert labels were computed from its output) and fixes what it gets wrong:

- Headers are upper-case names followed by a colon at the start of a line (the official pattern
  `\\n ([A-Z ()/,-]+):\\s`); the text before the first header is the `preamble`. We also accept a
  header on the very first line, a header at the end of the text, a header on the line right
  after another header (the official parser skips that line), and a known header glued to its
  text (`FINDINGS:The lungs...`, which the official pattern misses, losing the findings).
- Names are lower-cased and mapped through `SECTION_SYNONYMS` (our own table of what real reports
  use, typos included), then through the official fallbacks: a name containing impression,
  findings, history, comparison, addendum (or, unlike the official table, indication) becomes
  that section; a name describing views of the
  chest (`PA AND LATERAL`, `PORTABLE`, `CHEST`...) becomes findings. `ndication` is indication (the
  official table maps it to impression). Other names are kept, lower-cased, spaces as `_`.
- A section that occurs twice (two FINDINGS headers) is joined, paragraph after paragraph; the
  official parser keeps only the last one. Empty sections are dropped.
- Addenda come first, separated from the final report by a line of underscores; they are kept apart
  under `addendum` so they never leak into findings or impression. Only a block that is an addendum
  (it opens with `FINAL ADDENDUM` or `ADDENDUM:`) is taken out: a line of underscores anywhere else
  is dropped and the text around it stays in the report.
- When a report has neither findings nor impression, the paragraphs of its last section after the
  first become `last_paragraph` (official behaviour); a report without any header and with a single
  paragraph gets that paragraph as `last_paragraph` (the official parser returns nothing).
- Section text is re-joined into prose: line breaks inside a paragraph become spaces, runs of
  spaces become one space, paragraphs are separated by one `\\n`.

Nothing here raises on any input text: bad bytes, CRLF, empty files and missing headers are
reported as flags for the `cxr reports` summary instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cxr.mimic.schema import report_relpaths

# Normalized sections in the order they usually appear; also the column order of `cxr reports`.
SECTIONS: tuple[str, ...] = (
    "preamble",
    "examination",
    "indication",
    "history",
    "technique",
    "comparison",
    "findings",
    "impression",
    "recommendations",
    "notification",
    "wet_read",
    "comment",
    "addendum",
    "last_paragraph",
)

# Header (lower-cased, single-spaced) -> normalized section. Written from the headers real MIMIC-CXR
# reports use, misspellings included. Looked up before the substring fallbacks below.
SECTION_SYNONYMS: dict[str, str] = {
    # impression
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "concusion": "impression",
    "summary": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "impression and findings": "impression",
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "impressio": "impression",
    # findings
    "findings": "findings",
    "finding": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "fidnings": "findings",
    "reference findings": "findings",
    "chest, two views": "findings",
    "pa and lateral views of the chest": "findings",
    "frontal and lateral views of the chest": "findings",
    "portable ap view of the chest": "findings",
    # indication
    "indication": "indication",
    "indications": "indication",
    "ndication": "indication",  # the official table maps this one to impression: a bug
    "idication": "indication",
    "indicaton": "indication",
    "inidcation": "indication",
    "clinical indication": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "reason for study": "indication",
    "reason": "indication",
    "indication/history": "indication",
    "history/indication": "indication",
    # history
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "clinical info": "history",
    "clinical data": "history",
    "patient history": "history",
    "medical history": "history",
    "history of present illness": "history",
    "hx": "history",
    "pfi": "history",
    # comparison
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison exams": "comparison",
    "comparison study": "comparison",
    "comparison studies": "comparison",
    "comparison film": "comparison",
    "comparison films": "comparison",
    "reference exam": "comparison",
    "prior studies": "comparison",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
    "comparisson": "comparison",
    # technique
    "technique": "technique",
    "techniques": "technique",
    "tecnique": "technique",
    "technqiue": "technique",
    # examination
    "examination": "examination",
    "examinations": "examination",
    "exam": "examination",
    "exams": "examination",
    "type of examination": "examination",
    "exam type": "examination",
    "procedure": "examination",
    "study": "examination",
    # the rest
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "notification": "notification",
    "notifications": "notification",
    "wet read": "wet_read",
    "wetread": "wet_read",
    "comment": "comment",
    "comments": "comment",
    "addendum": "addendum",
    "addenda": "addendum",
    "final addendum": "addendum",
}

# Official fallbacks, in order: a header containing one of these names is that section...
_CONTAINS = ("impression", "findings", "history", "comparison", "addendum", "indication")
# ...and a header describing the views taken describes the whole study: findings.
_VIEWS_RE = re.compile(
    r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and|"
    r"two views|frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|"
    r"frontal semi-upright|ribs"
)

# A header: upper-case words and a colon at the start of a line. Officially white space or the end
# must follow; a known name glued to its text (`FINDINGS:The`) is accepted too (see _split_sections).
_HEADER_RE = re.compile(r"\n[ \t]*([A-Z(][A-Z ()/,-]*):")
# A line of underscores separates each addendum from what follows (PHI is only `___`).
_RULE_RE = re.compile(r"\n[ \t]*_{8,}[ \t]*(?=\n|$)")
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")
_TITLE_RE = re.compile(r"^\s*FINAL (?:REPORT|ADDENDUM)\b\s*", re.IGNORECASE)
_ADDENDUM_HEAD_RE = re.compile(r"^\s*ADDENDUM\s*:\s*", re.IGNORECASE)
_IS_ADDENDUM_RE = re.compile(r"^\s*(?:FINAL ADDENDUM\b|ADDENDUM\s*:)", re.IGNORECASE)
# Longer than any real report (MIMIC-CXR's are a few thousand characters): counted as odd.
LONG_REPORT_CHARS = 20_000

# Keys of the flags returned by `parse_report_flags`.
FLAG_CRLF = "crlf"
FLAG_EMPTY = "empty"
FLAG_NO_HEADER = "no_header"
FLAG_GLUED_HEADER = "glued_header"
FLAG_LONG = "long"


def normalize_section_name(name: str) -> str:
    """A header as written (`FINDINGS`, `IMPRESSON`, `PA AND LATERAL VIEWS`) -> section name."""
    key = " ".join(name.lower().split())
    hit = SECTION_SYNONYMS.get(key)
    if hit is not None:
        return hit
    for main in _CONTAINS:
        if main in key:
            return main
    if _VIEWS_RE.search(key):
        return "findings"
    return re.sub(r"[^a-z0-9()]+", "_", key).strip("_") or "unnamed"


def prose(text: str) -> str:
    """Report lines -> prose: paragraphs single-spaced, one `\\n` between paragraphs."""
    out = []
    for para in _BLANK_LINE_RE.split(text):
        joined = " ".join(para.split())
        if joined:
            out.append(joined)
    return "\n".join(out)


def _split_sections(text: str) -> tuple[list[tuple[str, str]], bool]:
    """(normalized name, raw text) pairs, the preamble first, and whether a known header was glued
    to its text (`FINDINGS:The`); text starts with `\\n`."""
    matches = []
    glued = False
    for m in _HEADER_RE.finditer(text):
        after = text[m.end() : m.end() + 1]
        if after and not after.isspace():
            # No white space after the colon: a header only if its name is one we know, so that
            # `RIGHT:LEFT`-like text stays prose.
            if " ".join(m.group(1).lower().split()) not in SECTION_SYNONYMS:
                continue
            glued = True
        matches.append(m)
    if not matches:
        return [("preamble", text)], False
    out = [("preamble", text[: matches[0].start()])]
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out.append((normalize_section_name(m.group(1)), text[m.end() : end]))
    return out, glued


def _split_addenda(text: str) -> tuple[list[str], str]:
    """(addenda, final report): the blocks between lines of underscores that are addenda, and the
    rest. A rule line is never text; a block that is not an addendum stays in the report."""
    addenda, body = [], []
    for block in _RULE_RE.split(text):
        (addenda if _IS_ADDENDUM_RE.match(block) else body).append(block)
    return addenda, "\n".join(body)


def _addendum_prose(blocks: list[str]) -> str:
    parts = []
    for piece in blocks:
        piece = _TITLE_RE.sub("", piece.lstrip("\n"), count=1)
        piece = _ADDENDUM_HEAD_RE.sub("", piece, count=1)
        p = prose(piece)
        if p:
            parts.append(p)
    return "\n".join(parts)


def parse_report_flags(text: str) -> tuple[dict[str, str], dict[str, bool]]:
    """`parse_report`, plus what was odd about the text (CRLF, empty, no header, a header glued to
    its text, longer than LONG_REPORT_CHARS)."""
    flags = dict.fromkeys(
        (FLAG_CRLF, FLAG_EMPTY, FLAG_NO_HEADER, FLAG_GLUED_HEADER, FLAG_LONG), False
    )
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if "\r" in text:
        flags[FLAG_CRLF] = True  # CRLF or bare CR line endings
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        flags[FLAG_EMPTY] = True
        return {}, flags

    flags[FLAG_LONG] = len(text) > LONG_REPORT_CHARS
    addenda, body = _split_addenda("\n" + text)
    pieces, flags[FLAG_GLUED_HEADER] = _split_sections(
        body if body.startswith("\n") else "\n" + body
    )
    flags[FLAG_NO_HEADER] = len(pieces) == 1

    sections: dict[str, str] = {}
    raw: dict[str, list[str]] = {}
    for name, chunk in pieces:
        raw.setdefault(name, []).append(chunk)

    if not any(prose(c) for n in ("findings", "impression") for c in raw.get(n, ())):
        # Official rule: what follows the first blank line of the last section is the last
        # paragraph (even when that first part is empty, as after `NOTE:` and a blank line).
        last_name, last_chunk = pieces[-1]
        parts = _BLANK_LINE_RE.split(last_chunk.rstrip(), maxsplit=1)
        if len(parts) == 2 and parts[1].strip():
            raw[last_name][-1] = parts[0]
            raw["last_paragraph"] = [parts[1]]
        elif len(pieces) == 1:
            # No header and one paragraph: the report's body, minus its `FINAL REPORT` title.
            body_text = _TITLE_RE.sub("", last_chunk, count=1)
            if body_text.strip():
                raw["preamble"] = [last_chunk[: len(last_chunk) - len(body_text)]]
                raw["last_paragraph"] = [body_text]

    for name, chunks in raw.items():
        joined = "\n".join(p for p in (prose(c) for c in chunks) if p)
        if joined:
            sections[name] = joined

    if addenda:
        extra = _addendum_prose(addenda)
        if extra:
            sections["addendum"] = (
                extra + "\n" + sections["addendum"] if "addendum" in sections else extra
            )
    return sections, flags


def parse_report(text: str) -> dict[str, str]:
    """Sections of one report under normalized names (see the module docstring); never raises."""
    return parse_report_flags(text)[0]


def labeler_text(sections: dict[str, str]) -> str:
    """The text the CheXpert labels were computed from: impression, else findings, else last paragraph."""
    for name in ("impression", "findings", "last_paragraph"):
        value = sections.get(name)
        if value:
            return value
    return ""


def decode_report(data: bytes) -> tuple[str, int]:
    """UTF-8 text and the number of characters replaced because their bytes were not UTF-8."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


def read_report(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Read one report file: (text, number of replaced characters). Raises OSError if unreadable."""
    with open(path, "rb") as f:
        return decode_report(f.read())


def find_report(raw_dir: str | os.PathLike[str], subject_id: int, study_id: int) -> str | None:
    """The report's path relative to `raw_dir`: the official place first, then the study folder."""
    for rel in report_relpaths(int(subject_id), int(study_id)):
        if os.path.isfile(os.path.join(raw_dir, rel)):
            return rel
    return None


# ---------------------------------------------------------------------------------------------
# Many files at once: chunks of relative paths sectioned in worker processes.


def section_file(raw_dir: str, relpath: str) -> dict[str, Any]:
    """One file -> {"sections", "replaced", "crlf", "empty", "no_header", "error"}; never raises."""
    try:
        text, replaced = read_report(os.path.join(raw_dir, relpath))
    except OSError as exc:
        return {"sections": {}, "replaced": 0, "error": f"{type(exc).__name__}: {exc.strerror}"}
    sections, flags = parse_report_flags(text)
    return {"sections": sections, "replaced": replaced, "error": None, **flags}


def _section_chunk(raw_dir: str, relpaths: Sequence[str]) -> list[dict[str, Any]]:
    return [section_file(raw_dir, rel) for rel in relpaths]


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


def section_files(
    raw_dir: str | os.PathLike[str],
    relpaths: Sequence[str],
    workers: int | None = None,
    chunk_size: int = 512,
    on_progress=None,
) -> list[dict[str, Any]]:
    """`section_file` for every path, in order, in `workers` processes (1: in this process).

    Workers are spawned (not forked): the parent may hold polars' thread pool, and forking a
    threaded process can deadlock. Small inputs stay in-process, where spawning costs more than
    it saves.
    """
    raw = str(raw_dir)
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(relpaths) < 2 * chunk_size:
        out = []
        for chunk in _chunks(relpaths, chunk_size):
            out.extend(_section_chunk(raw, chunk))
            if on_progress:
                on_progress(len(chunk))
        return out

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    results: list[list[dict[str, Any]]] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_section_chunk, raw, chunk) for chunk in _chunks(relpaths, chunk_size)
        ]
        for fut in futures:
            part = fut.result()
            results.append(part)
            if on_progress:
                on_progress(len(part))
    return [r for part in results for r in part]


# Columns `report_columns` adds to the manifest, after `study_id`.
MANIFEST_REPORT_COLUMNS: tuple[str, ...] = (
    "report_path",
    "findings",
    "impression",
    "indication",
    "comparison",
)


def find_reports(raw_dir: str | os.PathLike[str], pairs: list[tuple[int, int]]) -> list[str | None]:
    """For each (subject_id, study_id): the report's path relative to raw_dir, or None.

    Same rule as `find_report` (official place first), but each patient folder is listed once
    instead of stat-ing two paths per study: before the download no folder exists, and this costs
    one failed listing per patient.
    """
    raw = Path(raw_dir)
    listings: dict[int, set[str]] = {}
    groups: dict[str, set[str]] = {}  # files/p1X -> its patient folders
    out: list[str | None] = []
    for subject_id, study_id in pairs:
        official, guide = report_relpaths(subject_id, study_id)
        entries = listings.get(subject_id)
        if entries is None:
            group, patient = official.split("/")[1:3]
            if group not in groups:
                try:
                    groups[group] = set(os.listdir(raw / official.split("/")[0] / group))
                except OSError:
                    groups[group] = set()
            entries = set()
            if patient in groups[group]:
                with contextlib.suppress(OSError):
                    entries = set(os.listdir(raw / official.rsplit("/", 1)[0]))
            listings[subject_id] = entries
        if f"s{study_id}.txt" in entries and (raw / official).is_file():
            out.append(official)
        elif f"s{study_id}" in entries and (raw / guide).is_file():
            out.append(guide)
        else:
            out.append(None)
    return out


def report_columns(
    raw_dir: str | os.PathLike[str],
    table,
    workers: int | None = None,
    known: Callable[[int, str], dict[str, str] | None] | None = None,
):
    """Report columns for a manifest: one row per `study_id` of `table`.

    `table` is a polars DataFrame with `subject_id` and `study_id` (one row per study; duplicates
    are collapsed). Returns a polars DataFrame with `study_id` (int64), `report_path` (relative to
    `raw_dir`, null when no report was found) and `findings`, `impression`, `indication`,
    `comparison` (str, null when absent). `subject_id` is not in the result.

    `known(study_id, relpath)`: the sections already parsed from that very file (the reports
    table), or None; only the files it does not know are parsed here.
    """
    import polars as pl

    studies = table.select(
        pl.col("study_id").cast(pl.Int64), pl.col("subject_id").cast(pl.Int64)
    ).unique(subset="study_id", keep="first", maintain_order=True)
    study_ids = studies["study_id"].to_list()
    paths = find_reports(
        raw_dir, list(zip(studies["subject_id"].to_list(), study_ids, strict=True))
    )
    given = [
        known(study_id, path) if known is not None and path is not None else None
        for study_id, path in zip(study_ids, paths, strict=True)
    ]
    todo = [p for p, g in zip(paths, given, strict=True) if p is not None and g is None]
    parsed = iter(section_files(raw_dir, todo, workers=workers))
    cols: dict[str, list[str | None]] = {name: [] for name in MANIFEST_REPORT_COLUMNS[1:]}
    for path, sections in zip(paths, given, strict=True):
        if sections is None:
            sections = next(parsed)["sections"] if path is not None else {}
        for name, values in cols.items():
            values.append(sections.get(name))
    return pl.DataFrame(
        {"study_id": study_ids, "report_path": paths, **cols},
        schema={"study_id": pl.Int64, **{c: pl.Utf8 for c in MANIFEST_REPORT_COLUMNS}},
    )


def report_files(
    files_dir: str | os.PathLike[str],
) -> Iterable[tuple[int, str, str, os.stat_result]]:
    """Every report under `files/`: (study_id, relpath from the raw root, place, stat), place
    `official` (`pXXXXXXXX/sXXXXXXXX.txt`) or `study` (`pXXXXXXXX/sXXXXXXXX/sXXXXXXXX.txt`); the
    stat (size and mtime) tells whether a file changed, at the cost of one stat per report."""
    files_dir = Path(files_dir)
    top = files_dir.name
    for group in sorted(_scandir_names(files_dir, dirs=True)):
        if not (group.startswith("p") and group[1:].isdigit()):
            continue
        gdir = files_dir / group
        for patient in sorted(_scandir_names(gdir, dirs=True)):
            if not (patient.startswith("p") and patient[1:].isdigit()):
                continue
            pdir = gdir / patient
            try:
                entries = sorted(os.scandir(pdir), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if not (name.startswith("s") and len(name) > 1):
                    continue
                if name.endswith(".txt") and name[1:-4].isdigit():
                    if _is_file(entry) and (st := _stat(entry.path)) is not None:
                        yield int(name[1:-4]), f"{top}/{group}/{patient}/{name}", "official", st
                elif name[1:].isdigit() and _is_dir(entry):
                    st = _stat(os.path.join(entry.path, f"{name}.txt"))
                    if st is not None and stat.S_ISREG(st.st_mode):
                        rel = f"{top}/{group}/{patient}/{name}/{name}.txt"
                        yield int(name[1:]), rel, "study", st


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _scandir_names(path: Path, dirs: bool) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if not dirs or _is_dir(e)]
    except OSError:
        return []

"""Report sectioning: the official example, every synonym, bad input, both file places, the CLI."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr.cli import main
from cxr.mimic.reports import (
    SECTION_SYNONYMS,
    decode_report,
    find_report,
    labeler_text,
    normalize_section_name,
    parse_report,
    parse_report_flags,
    read_report,
    report_columns,
    section_files,
)

DATA = Path(__file__).parent / "data"
EXAMPLE = DATA / "mimic_cxr_example_report.txt"


def _report(*sections: tuple[str, str], title: str = "FINAL REPORT") -> str:
    """A report in the real layout: centred title, every line starting with a space."""
    lines = [" " * 33 + title]
    for header, body in sections:
        lines.append(f" {header}: ")
        lines.append(" ")
        lines.extend(f" {line}" for line in body.splitlines())
        lines.append(" ")
    return "\n".join(lines) + "\n"


def test_official_example():
    sections = parse_report(EXAMPLE.read_text())
    assert sections == {
        "preamble": "FINAL REPORT",
        "examination": "CHEST (PA AND LAT)",
        "indication": "___ year old woman with ?pleural effusion // ?pleural effusion",
        "technique": "Chest PA and lateral",
        "comparison": "___",
        "findings": "Cardiac size cannot be evaluated. Large left pleural effusion is new. Small "
        "right effusion is new. The upper lungs are clear. Right lower lobe opacities are better "
        "seen in prior CT. There is no pneumothorax. There are mild degenerative changes in the "
        "thoracic spine",
        "impression": "Large left pleural effusion",
    }
    assert labeler_text(sections) == "Large left pleural effusion"


@pytest.mark.parametrize(("header", "expected"), sorted(SECTION_SYNONYMS.items()))
def test_each_synonym(header, expected):
    # A findings (or impression) section after it keeps the last-paragraph rule out of the way.
    closing = "IMPRESSION" if expected == "findings" else "FINDINGS"
    opening = "EXAMINATION" if expected != "examination" else "TECHNIQUE"
    text = _report((opening, "CHEST"), (header.upper(), "Body text here."), (closing, "x"))
    sections = parse_report(text)
    assert sections[expected] == "Body text here.", sections


def test_table_is_large_and_fixes_official_bug():
    assert len(SECTION_SYNONYMS) >= 50
    assert SECTION_SYNONYMS["ndication"] == "indication"
    assert SECTION_SYNONYMS["findings and impression"] == "impression"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("FINAL IMPRESSION", "impression"),
        ("PRELIMINARY FINDINGS", "findings"),
        ("PAST HISTORY", "history"),
        ("COMPARISON TO PRIOR", "comparison"),
        ("PA AND LATERAL CHEST RADIOGRAPHS", "findings"),
        ("PORTABLE SEMI-UPRIGHT AP", "findings"),
        ("NOTE", "note"),
        ("DR NOTIFIED (BY PHONE)", "dr_notified_(by_phone)"),
    ],
)
def test_fallback_rules(header, expected):
    assert normalize_section_name(header) == expected


def test_prose_paragraphs_and_spaces():
    text = _report(("FINDINGS", "Line one\ncontinues  here.\n\nSecond   paragraph."))
    assert parse_report(text)["findings"] == "Line one continues here.\nSecond paragraph."


def test_empty_sections_dropped_and_duplicate_sections_joined():
    text = " FINAL REPORT\n FINDINGS:\n \n FINDINGS: a\n \n IMPRESSION: one\n \n IMPRESSION: two\n"
    sections = parse_report(text)
    assert sections["findings"] == "a"
    assert sections["impression"] == "one\ntwo"
    assert all(v for v in sections.values())


def test_header_right_after_header_and_first_line_and_end():
    assert parse_report("FINDINGS:\n IMPRESSION: Normal.")["impression"] == "Normal."
    assert parse_report(" FINDINGS: clear lungs")["findings"] == "clear lungs"
    assert parse_report(" FINDINGS: x\n IMPRESSION:") == {"findings": "x"}


def test_headers_without_following_newline():
    text = " FINAL REPORT\n INDICATION: cough. FINDINGS: inline is not a header\n IMPRESSION: ok"
    sections, flags = parse_report_flags(text)
    assert sections["indication"] == "cough. FINDINGS: inline is not a header"
    assert sections["impression"] == "ok"
    assert not flags["glued_header"]


def test_known_header_glued_to_its_text():
    # The official pattern needs white space after the colon and would lose these findings.
    text = " FINAL REPORT\n FINDINGS:The lungs are clear.\n more.\n IMPRESSON:Normal."
    sections, flags = parse_report_flags(text)
    assert sections["findings"] == "The lungs are clear. more."
    assert sections["impression"] == "Normal."
    assert flags["glued_header"] and not flags["no_header"]
    # An unknown name glued to text is prose, not a header.
    sections, flags = parse_report_flags(" FINDINGS: ratio\n RIGHT:LEFT is 2\n")
    assert sections["findings"] == "ratio RIGHT:LEFT is 2" and not flags["glued_header"]


def test_crlf_and_lone_cr():
    text = EXAMPLE.read_text().replace("\n", "\r\n")
    sections, flags = parse_report_flags(text)
    assert flags["crlf"]
    assert sections == parse_report(EXAMPLE.read_text())
    lone_cr, flags = parse_report_flags(EXAMPLE.read_text().replace("\n", "\r"))
    assert lone_cr == sections and flags["crlf"]  # old Mac line endings are counted too


def test_empty_and_whitespace_and_none():
    for text in ("", "   \n \n", "\ufeff"):
        sections, flags = parse_report_flags(text)
        assert sections == {} and flags["empty"]
        assert labeler_text(sections) == ""
    assert parse_report(None) == {}


def test_no_header():
    sections, flags = parse_report_flags("                FINAL REPORT\n Lungs are clear.\n")
    assert flags["no_header"]
    assert sections == {"preamble": "FINAL REPORT", "last_paragraph": "Lungs are clear."}
    text = " FINAL REPORT\n Portable chest.\n \n No pneumothorax.\n \n Tube in place.\n"
    sections = parse_report(text)
    assert sections["last_paragraph"] == "No pneumothorax.\nTube in place."
    assert labeler_text(sections) == "No pneumothorax.\nTube in place."


def test_last_paragraph_only_without_findings_or_impression():
    text = " FINAL REPORT\n INDICATION: cough\n \n COMPARISON:  None.\n \n The lungs are clear.\n"
    sections = parse_report(text)
    assert sections["comparison"] == "None."
    assert sections["last_paragraph"] == "The lungs are clear."
    assert labeler_text(sections) == "The lungs are clear."
    # As in the official parser, a section opening with a blank line gives all of its text.
    text = _report(("INDICATION", "cough"), ("NOTE", "Lungs clear.\n\nNo effusion."))
    sections = parse_report(text)
    assert "note" not in sections
    assert sections["last_paragraph"] == "Lungs clear.\nNo effusion."
    with_findings = _report(("FINDINGS", "a\n\nb"))
    assert "last_paragraph" not in parse_report(with_findings)


def test_labeler_text_order():
    assert labeler_text({"impression": "i", "findings": "f"}) == "i"
    assert labeler_text({"findings": "f", "last_paragraph": "p"}) == "f"
    assert labeler_text({"last_paragraph": "p"}) == "p"
    assert labeler_text({}) == ""


def test_addenda_kept_apart():
    text = (
        "                                 FINAL ADDENDUM\n"
        " ADDENDUM:  Findings were discussed with Dr. ___ at 10:00.\n"
        " \n"
        " ______________________________________________________________________________\n"
        + EXAMPLE.read_text()
    )
    sections = parse_report(text)
    assert sections["addendum"] == "Findings were discussed with Dr. ___ at 10:00."
    assert sections["impression"] == "Large left pleural effusion"
    assert sections["preamble"] == "FINAL REPORT"
    # A trailing rule with nothing after it is not an addendum separator.
    assert "addendum" not in parse_report(EXAMPLE.read_text() + " " + "_" * 40 + "\n")


def test_several_addenda_each_stripped_of_its_title():
    addendum = " " * 33 + "FINAL ADDENDUM\n ADDENDUM:  {}\n \n " + "_" * 78 + "\n"
    text = addendum.format("First note.") + addendum.format("Second note.") + EXAMPLE.read_text()
    sections = parse_report(text)
    assert sections["addendum"] == "First note.\nSecond note."
    assert sections["impression"] == "Large left pleural effusion"


def test_rule_that_is_not_an_addendum_keeps_the_text_around_it():
    """A line of underscores inside the report must not turn the findings above it into addenda."""
    rule = " " + "_" * 60
    text = _report(("INDICATION", "cough"), ("FINDINGS", f"Lungs clear.\n{rule}\nNo effusion."))
    text += rule + "\n IMPRESSION: Normal.\n"
    sections = parse_report(text)
    assert "addendum" not in sections
    assert sections["findings"] == "Lungs clear.\nNo effusion."  # the rule ends a paragraph
    assert sections["impression"] == "Normal."
    assert sections["indication"] == "cough"


def test_very_long_report():
    body = "The lungs are clear without consolidation.\n" * 20000
    sections = parse_report(_report(("FINDINGS", body), ("IMPRESSION", "Normal.")))
    assert len(sections["findings"]) > 800_000
    assert sections["impression"] == "Normal."
    assert parse_report_flags(_report(("FINDINGS", body)))[1]["long"]
    assert not parse_report_flags(EXAMPLE.read_text())[1]["long"]


def test_decode_non_utf8(tmp_path):
    assert decode_report(b"plain") == ("plain", 0)
    text, n = decode_report(b" FINDINGS: caf\xe9 \xff\n")
    assert n == 2 and "\ufffd" in text
    # A real U+FFFD already in the file is not counted as replaced.
    assert decode_report("ok \ufffd".encode() + b"\xff")[1] == 1
    p = tmp_path / "r.txt"
    p.write_bytes(b" FINDINGS: bad \x80 byte\n IMPRESSION: ok\n")
    text, n = read_report(p)
    assert n == 1 and parse_report(text)["impression"] == "ok"


# -- property: never raises, loses no findings or impression words --------------------------------

_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz.,;()?/-_0123456789", min_size=1, max_size=10)
_LINE = st.lists(_WORD, min_size=1, max_size=8).map(" ".join)
_BODY = st.lists(_LINE, min_size=1, max_size=6).map(lambda lines: "\n".join(lines))
_NOISE = st.sampled_from(["", "\n", "\r\n", "   ", "\n \n", "\t"])


@settings(max_examples=300, deadline=None)
@given(
    findings=_BODY,
    impression=_BODY,
    crlf=st.booleans(),
    noise=_NOISE,
    findings_header=st.sampled_from(["FINDINGS", "FINDING", "PA AND LATERAL VIEWS OF THE CHEST"]),
    impression_header=st.sampled_from(["IMPRESSION", "CONCLUSION", "IMPRESSON"]),
    addendum=st.booleans(),
)
def test_property_keeps_findings_and_impression_words(
    findings, impression, crlf, noise, findings_header, impression_header, addendum
):
    text = _report(
        ("INDICATION", "cough"), (findings_header, findings), (impression_header, impression)
    )
    if addendum:
        text = " ADDENDUM: see below\n " + "_" * 60 + "\n" + text
    text = noise + text
    if crlf:
        text = text.replace("\n", "\r\n")
    sections = parse_report(text)
    for words, key in ((findings.split(), "findings"), (impression.split(), "impression")):
        assert sections[key].split() == words


_OTHER_HEADERS = [
    "EXAMINATION",
    "INDICATION",
    "HISTORY",
    "TECHNIQUE",
    "COMPARISON",
    "NOTE",
    "WET READ",
]


@st.composite
def _layout(draw):
    """A report with findings and impression bodies among other sections, in a random layout:
    header on its own line or followed by text, glued to it, lines with or without the leading
    space, blank lines or not, rules between sections, addenda, CRLF, sections in any order."""
    findings, impression = draw(_BODY), draw(_BODY)
    sections = [
        (
            draw(st.sampled_from(["FINDINGS", "FINDING", "PA AND LATERAL VIEWS OF THE CHEST"])),
            findings,
        ),
        (draw(st.sampled_from(["IMPRESSION", "CONCLUSION", "IMPRESSON", "SUMMARY"])), impression),
    ]
    sections += [
        (h, draw(_BODY)) for h in draw(st.lists(st.sampled_from(_OTHER_HEADERS), max_size=4))
    ]
    sections = draw(st.permutations(sections))
    lines = [draw(st.sampled_from([" " * 33 + "FINAL REPORT", "FINAL REPORT", ""]))]
    for header, body in sections:
        indent = draw(st.sampled_from([" ", "", "  "]))
        sep = draw(st.sampled_from([": ", ":  ", ":\n", ": \n \n", ":"]))
        if sep == ":" and header.lower() not in SECTION_SYNONYMS:  # only known names may be glued
            sep = ": "
        body_lines = body.splitlines()
        lines.append(f"{indent}{header}{sep}{body_lines[0]}")
        lines += [f"{indent}{x}" for x in body_lines[1:]]
        if draw(st.booleans()):
            lines.append(" ")
        if draw(st.booleans()):
            lines.append(" " + "_" * 40)
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n"]))
    if draw(st.booleans()):
        text = " " * 33 + "FINAL ADDENDUM\n ADDENDUM: see below\n \n " + "_" * 60 + "\n" + text
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text, findings, impression


@settings(max_examples=400, deadline=None)
@given(_layout())
def test_property_random_layouts_keep_findings_and_impression(case):
    text, findings, impression = case
    sections = parse_report(text)
    assert sections["findings"].split() == findings.split()
    assert sections["impression"].split() == impression.split()
    assert "addendum" not in sections or sections["addendum"] == "see below"


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=400)
    | st.text(alphabet="FINDGSMPRO ():_-\n\r\t ", max_size=300)
    | st.binary(max_size=400).map(lambda b: decode_report(b)[0])
)
def test_property_never_raises(text):
    sections = parse_report(text)
    assert all(isinstance(v, str) and v for v in sections.values())
    assert isinstance(labeler_text(sections), str)


# -- files on disk ------------------------------------------------------------------------------

SUBJECT, STUDY = 10000032, 50414267


def _write_tree(root: Path) -> dict[int, str]:
    """A small raw tree: reports in both places, one in both, one non-UTF-8, one empty."""
    files = root / "files" / "p10" / f"p{SUBJECT}"
    (files / f"s{STUDY}").mkdir(parents=True)
    reports = {
        STUDY: (files / f"s{STUDY}.txt", EXAMPLE.read_bytes()),
        50000001: (
            files / "s50000001" / "s50000001.txt",
            _report(("FINDINGS", "Clear."), ("IMPRESSION", "Normal.")).encode(),
        ),
        50000002: (files / "s50000002.txt", b" FINAL REPORT\r\n IMPRESSION: caf\xe9\r\n"),
        50000003: (files / "s50000003.txt", b""),
    }
    other = root / "files" / "p11" / "p11000001" / "s50000004"
    other.mkdir(parents=True)
    reports[50000004] = (other / "s50000004.txt", b" FINAL REPORT\n Lungs clear.\n")
    glued = b" FINAL REPORT\n FINDINGS:Clear.\n IMPRESSION:Normal.\n"
    reports[50000005] = (other.parent / "s50000005.txt", glued)
    long = _report(("FINDINGS", "Clear lungs.\n" * 2000), ("IMPRESSION", "Normal.")).encode()
    reports[50000006] = (other.parent / "s50000006.txt", long)
    for path, data in reports.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # The same study in both places: the official one wins.
    (files / f"s{STUDY}" / f"s{STUDY}.txt").write_text(" FINAL REPORT\n IMPRESSION: stale\n")
    (files / f"s{STUDY}" / "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg").write_bytes(b"x")
    return {k: str(p.relative_to(root)) for k, (p, _) in reports.items()}


def test_find_report_both_places(tmp_path):
    rel = _write_tree(tmp_path)
    assert (
        find_report(tmp_path, SUBJECT, STUDY) == rel[STUDY] == f"files/p10/p{SUBJECT}/s{STUDY}.txt"
    )
    assert find_report(tmp_path, SUBJECT, 50000001) == rel[50000001]
    assert find_report(tmp_path, SUBJECT, 59999999) is None


def test_report_columns(tmp_path):
    _write_tree(tmp_path)
    table = pl.DataFrame(
        {
            "subject_id": [SUBJECT, SUBJECT, SUBJECT, 11000001, SUBJECT],
            "study_id": [STUDY, 50000001, 59999999, 50000004, STUDY],
        }
    )
    out = report_columns(tmp_path, table)
    assert out.columns == [
        "study_id",
        "report_path",
        "findings",
        "impression",
        "indication",
        "comparison",
    ]
    assert "subject_id" not in out.columns and out.height == 4
    assert out.schema["study_id"] == pl.Int64
    rows = {r["study_id"]: r for r in out.iter_rows(named=True)}
    assert rows[STUDY]["impression"] == "Large left pleural effusion"
    assert rows[STUDY]["comparison"] == "___"
    assert rows[50000001]["findings"] == "Clear."
    assert rows[59999999]["report_path"] is None and rows[59999999]["findings"] is None
    assert rows[50000004]["impression"] is None


def test_section_files_processes_match_in_process(tmp_path):
    rel = _write_tree(tmp_path)
    paths = sorted(rel.values()) * 3
    one = section_files(tmp_path, paths, workers=1)
    two = section_files(tmp_path, paths, workers=2, chunk_size=2)
    assert one == two
    assert section_files(tmp_path, ["files/missing.txt"])[0]["error"].startswith("FileNotFound")


def test_cli_end_to_end(tmp_path, capsys):
    raw = tmp_path / "raw"
    _write_tree(raw)
    out = tmp_path / "processed" / "reports.parquet"
    sectioned = tmp_path / "mimic_cxr_sectioned.csv"
    rc = main(["--data-dir", str(tmp_path), "reports", "--csv", str(sectioned), "--workers", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "sectioned 7 reports" in printed
    assert "non-UTF-8 files 1 (1 characters replaced)" in printed
    assert "empty 1" in printed and "CRLF 1" in printed and "in both places 1" in printed
    assert "no header 1" in printed
    assert "header glued to its text 1" in printed and "over 20,000 characters 1" in printed

    table = pl.read_parquet(out)
    assert table["study_id"].to_list() == sorted(table["study_id"].to_list())
    assert "subject_id" not in table.columns
    rows = {r["study_id"]: r for r in table.iter_rows(named=True)}
    assert rows[STUDY]["impression"] == "Large left pleural effusion"
    assert rows[STUDY]["labeler_text"] == "Large left pleural effusion"
    assert rows[50000004]["labeler_text"] == "Lungs clear."
    assert rows[50000003]["labeler_text"] == ""
    assert rows[50000002]["impression"] == "caf\ufffd"
    assert rows[50000005]["findings"] == "Clear." and rows[50000005]["labeler_text"] == "Normal."

    with sectioned.open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == ["study", "impression", "findings", "last_paragraph", "comparison"]
    by_study = {r["study"]: r for r in csv_rows}
    assert by_study[f"s{STUDY}"]["impression"] == "Large left pleural effusion"
    assert by_study["s50000004"]["last_paragraph"] == "Lungs clear."
    assert by_study["s50000003"]["findings"] == ""

    # Privacy: no subject_id in anything written or printed.
    blob = out.read_bytes() + sectioned.read_bytes() + printed.encode()
    for subject in (str(SUBJECT), "11000001"):
        assert subject.encode() not in blob
    assert not re.search(rb"p1\d{7}", blob)


def test_cli_errors(tmp_path, capsys):
    assert main(["reports", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert (
        "files/ folder of the raw root not found; `cxr download subset`" in capsys.readouterr().err
    )
    (tmp_path / "files").mkdir()
    assert main(["reports", "--raw", str(tmp_path), "--out", str(tmp_path / "o.parquet")]) == 1
    assert (
        "report files (sXXXXXXXX.txt) not found; `cxr download subset`" in capsys.readouterr().err
    )


def test_manifest_carries_sections(tmp_path):
    """`cxr manifest` takes the report sections onto every image row of their study."""
    from cxr.mimic.manifest import ManifestConfig, make_manifest
    from rawtables import make_frames, write_raw

    raw = write_raw(tmp_path / "raw", make_frames())
    official = raw / "files" / "p10" / "p10000001" / "s50000011.txt"
    official.parent.mkdir(parents=True, exist_ok=True)
    official.write_bytes(EXAMPLE.read_bytes())
    inside = raw / "files" / "p10" / "p10000001" / "s50000012" / "s50000012.txt"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text(_report(("FINDINGS", "Clear."), ("IMPRESSION", "Normal.")))
    cfg = ManifestConfig(raw=raw, out=tmp_path / "out" / "manifest.parquet")
    df = make_manifest(cfg)[0].manifest
    rows = {r["study_id"]: r for r in df.iter_rows(named=True)}
    assert rows[50000011]["report_path"] == "files/p10/p10000001/s50000011.txt"
    assert rows[50000011]["impression"] == "Large left pleural effusion"
    assert rows[50000011]["indication"].startswith("___ year old woman")
    assert rows[50000012]["findings"] == "Clear."
    others = df.filter(~pl.col("study_id").is_in([50000011, 50000012]))
    assert others["report_path"].is_null().all() and others["findings"].is_null().all()


def test_demo_reports_reproduce_generator(tmp_path):
    """On the demo tree the parsed sections say what the generator wrote."""
    from cxr.mimic.demo import write_demo
    from cxr.mimic.reports import report_files

    raw = tmp_path / "raw"
    summary = write_demo(raw, n_patients=8, seed=0, image_size=64)
    where = {study: rel for study, rel, _, _ in report_files(raw / "files")}
    assert set(where) >= {int(s) for s in summary.reports}
    for study_id, written in summary.reports.items():
        parsed = parse_report(read_report(raw / where[int(study_id)])[0])
        for name, text in written.items():
            assert parsed.get(name, "").split() == str(text).split(), (study_id, name)


# -- one reports table for `cxr reports` and `cxr manifest` -------------------------------------


def _raw_with_reports(tmp_path: Path) -> Path:
    """The hand-made CSVs, with reports for four of their studies (one at the guide's place)."""
    from rawtables import make_frames, write_raw

    raw = write_raw(tmp_path / "raw", make_frames())
    texts = {
        "files/p10/p10000001/s50000011.txt": EXAMPLE.read_text(),
        "files/p10/p10000001/s50000012/s50000012.txt": _report(
            ("FINDINGS", "Clear."), ("IMPRESSION", "Normal.")
        ),
        "files/p10/p10000004/s50000041.txt": _report(("IMPRESSION", "Small effusion.")),
        "files/p10/p10000005/s50000051.txt": _report(("FINDINGS", "Pneumothorax.")),
    }
    for rel, text in texts.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_text(text)
    return raw


@pytest.fixture
def parsed(monkeypatch):
    """Every report file sectioned in this process, in order (`--workers 1` keeps it here)."""
    import cxr.mimic.reports as reports_module

    seen: list[str] = []
    real = reports_module.section_file

    def counting(raw_dir, relpath):
        seen.append(relpath)
        return real(raw_dir, relpath)

    monkeypatch.setattr(reports_module, "section_file", counting)
    return seen


def _manifest(tmp_path: Path, raw: Path) -> pl.DataFrame:
    from cxr.mimic.manifest import ManifestConfig, make_manifest

    cfg = ManifestConfig(raw=raw, out=tmp_path / "processed" / "manifest.parquet")
    return make_manifest(cfg)[0].manifest


def test_manifest_then_reports_section_each_report_once(tmp_path, parsed, capsys):
    raw = _raw_with_reports(tmp_path)
    df = _manifest(tmp_path, raw)
    rows = {r["study_id"]: r for r in df.iter_rows(named=True)}
    assert rows[50000011]["impression"] == "Large left pleural effusion"
    assert rows[50000012]["findings"] == "Clear."
    sectioned = tmp_path / "sectioned.csv"
    argv = ["--data-dir", str(tmp_path), "reports", "--raw", str(raw), "--workers", "1"]
    assert main([*argv, "--csv", str(sectioned)]) == 0
    assert "up to date (4 reports" in capsys.readouterr().out
    assert sorted(parsed) == sorted(set(parsed)) and len(parsed) == 4
    table = pl.read_parquet(tmp_path / "processed" / "reports.parquet")
    assert table["study_id"].to_list() == [50000011, 50000012, 50000041, 50000051]
    assert "s50000041,Small effusion.,," in sectioned.read_text()
    # ...and a second manifest reuses it too.
    assert _manifest(tmp_path, raw).equals(df)
    assert len(parsed) == 4


def test_reports_then_manifest_reuse_and_a_changed_file_is_parsed_again(tmp_path, parsed):
    raw = _raw_with_reports(tmp_path)
    argv = ["--data-dir", str(tmp_path), "reports", "--raw", str(raw), "--workers", "1"]
    assert main(argv) == 0
    assert len(parsed) == 4
    df = _manifest(tmp_path, raw)
    assert len(parsed) == 4  # the manifest took its sections from the table
    row = df.filter(pl.col("study_id") == 50000041).row(0, named=True)
    assert row["impression"] == "Small effusion."
    # An edited report makes the table stale: rebuilt, with the new text.
    (raw / "files/p10/p10000004/s50000041.txt").write_text(_report(("IMPRESSION", "Large.")))
    df = _manifest(tmp_path, raw)
    assert set(df.filter(pl.col("study_id") == 50000041)["impression"]) == {"Large."}
    assert len(parsed) == 8
    table = pl.read_parquet(tmp_path / "processed" / "reports.parquet")
    assert table.filter(pl.col("study_id") == 50000041)["impression"].to_list() == ["Large."]


def test_a_stale_or_foreign_table_is_never_reused(tmp_path, parsed):
    from cxr.mimic.report_table import report_table, scan_reports, sidecar_path

    raw = _raw_with_reports(tmp_path)
    out = tmp_path / "t" / "reports.parquet"
    first = report_table(raw, out, workers=1)
    assert not first.reused and len(parsed) == 4
    assert report_table(raw, out, workers=1).reused and len(parsed) == 4
    # A new report: stale.
    new = raw / "files/p10/p10000002/s50000021.txt"
    new.parent.mkdir(parents=True)
    new.write_text(_report(("IMPRESSION", "New.")))
    again = report_table(raw, out, workers=1)
    assert not again.reused and again.table.height == 5
    # The same files under another raw root: not this table.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(raw, other)
    assert report_table(raw, out, workers=1).reused
    n = len(parsed)
    assert not report_table(other, out, workers=1).reused and len(parsed) == n + 5
    # A table replaced behind the sidecar's back: its SHA-256 no longer matches.
    pl.DataFrame({"study_id": [1]}).write_parquet(out)
    assert load_ok(out, other, scan_reports(other)) is False
    assert not report_table(other, out, workers=1).reused
    assert sidecar_path(out).name == "reports.json"


def load_ok(out, raw, scan) -> bool:
    from cxr.mimic.report_table import load_report_table

    return load_report_table(out, raw, scan) is not None


def test_manifest_parses_its_own_file_when_the_table_chose_another(tmp_path, parsed):
    """A study whose report also sits under another patient folder: the table keeps the first one
    found, the manifest wants its own patient's file, and parses that one."""
    raw = _raw_with_reports(tmp_path)
    decoy = raw / "files/p10/p10000000/s50000011.txt"
    decoy.parent.mkdir(parents=True)
    decoy.write_text(_report(("IMPRESSION", "Decoy.")))
    df = _manifest(tmp_path, raw)
    row = df.filter(pl.col("study_id") == 50000011).row(0, named=True)
    assert row["report_path"] == "files/p10/p10000001/s50000011.txt"
    assert row["impression"] == "Large left pleural effusion"
    assert parsed.count("files/p10/p10000001/s50000011.txt") == 1


def test_report_table_errors_are_one_line(tmp_path, capsys):
    raw = _raw_with_reports(tmp_path)
    rc = main(["reports", "--raw", str(raw), "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "must not end in .json" in err and err.count("\n") == 1
    rc = main(["reports", "--raw", str(raw), "--workers", "0", "--out", str(tmp_path / "t")])
    assert rc == 1 and "--workers must be at least 1" in capsys.readouterr().err


def test_output_paths_that_cannot_be_written_are_one_line(tmp_path, capsys):
    raw = _raw_with_reports(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    for extra in (
        ["--out", str(tmp_path / "adir")],
        ["--out", str(tmp_path / "afile" / "t.parquet")],
        ["--out", str(tmp_path / "t.parquet"), "--csv", str(tmp_path / "adir")],
    ):
        assert main(["reports", "--raw", str(raw), "--workers", "1", *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write" in err and "Traceback" not in err

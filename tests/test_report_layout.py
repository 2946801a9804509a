"""What `cxr evaluate` shows fits: the terminal table in 80 columns (the full one stays in the
HTML and JSON), and report.html's tables in an 800 px window (measured in headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from _eval_fixtures import make_data
from cxr.cli import main
from cxr.mimic.schema import LABELS

INTERVAL = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("layout")
    fx = make_data(base / "data")
    return fx, base


def _table(printed: str) -> list[str]:
    lines = printed.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.endswith("level:")) + 1
    end = next(i for i, ln in enumerate(lines) if ln.startswith("macro over"))
    return lines[start:end]


def test_the_printed_table_fits_80_columns(evaluated, capsys):
    fx, base = evaluated
    argv = ["--data-dir", str(fx.root), "evaluate", "--checkpoint", str(fx.checkpoint)]
    assert main([*argv, "--out", str(base / "r"), "--split", "test", "--bootstrap", "50"]) == 0
    table = _table(capsys.readouterr().out)
    assert table[0].split() == ["label", "pos", "AUROC", "[95%", "CI]", "AUPRC", "sens.", "spec."]
    assert len(table) == len(LABELS) + 2 and table[-1].startswith("macro (")
    for line in table:
        assert len(line) <= 80 and "…" not in line, line
    assert any(re.search(INTERVAL, line) for line in table)  # intervals printed whole


def test_the_compact_table_fits_80_columns_at_its_widest():
    from cxr.evaluation.report import table_lines

    wide = {"auroc": 0.999, "auroc_ci": [0.998, 1.0], "auprc": 0.999, "n_pos": 99999}
    wide |= {"sensitivity": 1.0, "specificity": 1.0, "excluded_from_macro": "few"}
    macro = {"n_labels": 14, "auroc": 0.9, "auroc_ci": [0.8, 1.0], "auprc": 0.9}
    macro |= {"sensitivity": 0.9, "specificity": 0.9}
    lines = table_lines({"labels": dict.fromkeys(LABELS, wide), "macro": macro})
    assert max(len(line) for line in lines) <= 80
    assert "Enlarged Cardiomediastinum*" in lines[LABELS.index("Enlarged Cardiomediastinum") + 1]


def test_report_tables_fit_an_800_px_window(evaluated, tmp_path):
    fx, base = evaluated
    report = base / "r" / "report.html"
    if not report.exists():
        argv = ["--quiet", "--data-dir", str(fx.root), "evaluate", "--checkpoint"]
        assert main([*argv, str(fx.checkpoint), "--out", str(base / "r"), "--bootstrap", "50"]) == 0
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium not installed on this machine (apt-get install chromium)")
    probe = """<script>
    const w = document.documentElement.clientWidth;
    const boxes = [...document.querySelectorAll('table')].map(t => {
      const box = t.parentElement.classList.contains('scroll') ? t.parentElement : t;
      return [t.rows[0].textContent.slice(0, 30), box.scrollWidth, box.clientWidth];
    });
    document.body.setAttribute('data-probe', JSON.stringify(
      {page: document.documentElement.scrollWidth, width: w, tables: boxes}));
    </script>"""
    page = tmp_path / "report.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=800,1000",
            "--dump-dom",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[:500]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["width"] <= 800
    assert probe["page"] <= probe["width"], probe  # the page never scrolls sideways
    for header, scroll_width, width in probe["tables"]:
        assert scroll_width <= width, f"table starting {header!r} overflows: {probe}"

"""Benchmark report sectioning.

1. `parse_report` alone over 227,835 generated reports (MIMIC-CXR's count) held in memory, on one
   core: reports/s (goal: at least 20,000).
2. `cxr reports` over N report files on disk (default 30,000, half in each of the two places),
   compared with just reading the same files (`cat` and a Python read loop), page cache warm.

    PYTHONPATH=src python benchmarks/bench_reports.py [--n-files 30000] [--workers 2]

Inputs are generated under benchmarks/_work (gitignored) and never committed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxr.mimic.reports import parse_report

N_REPORTS = 227_835
WORK = Path(__file__).parent / "_work" / "reports"

_SENTENCES = [
    "The lungs are clear without focal consolidation.",
    "There is no pleural effusion or pneumothorax.",
    "Heart size is normal.",
    "Mild cardiomegaly is stable.",
    "Large left pleural effusion is new.",
    "Right lower lobe opacities are better seen in prior CT.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "There are mild degenerative changes in the thoracic spine.",
    "Mediastinal and hilar contours are unremarkable.",
    "Bibasilar atelectasis.",
    "No acute cardiopulmonary process.",
    "Right PICC line tip in the low SVC.",
]
_HEADERS = {
    "examination": ["EXAMINATION", "EXAM", "TYPE OF EXAMINATION"],
    "indication": ["INDICATION", "REASON FOR EXAM", "CLINICAL INDICATION", "NDICATION"],
    "history": ["HISTORY", "CLINICAL HISTORY"],
    "technique": ["TECHNIQUE"],
    "comparison": ["COMPARISON", "COMPARISONS", "COMPARISION"],
    "findings": ["FINDINGS", "FINDING", "PA AND LATERAL VIEWS OF THE CHEST"],
    "impression": ["IMPRESSION", "CONCLUSION", "IMPRESSON"],
}


def _wrap(text: str, width: int = 78) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def make_report(rng: random.Random) -> str:
    """One report in the real layout, varied: headers, typos, addenda, no header, CRLF."""
    out = [" " * 33 + "FINAL REPORT"]
    kind = rng.random()
    if kind < 0.05:  # no header at all
        for _ in range(rng.randint(1, 3)):
            out += [f" {x}" for x in _wrap(" ".join(rng.sample(_SENTENCES, 3)))] + [" "]
    else:
        names = ["examination", "indication", "technique", "comparison", "findings", "impression"]
        if rng.random() < 0.2:
            names.insert(2, "history")
        if rng.random() < 0.12:
            names.remove("findings")
        if rng.random() < 0.05:
            names.remove("impression")
        for name in names:
            header = rng.choice(_HEADERS[name])
            n = rng.randint(2, 6) if name == "findings" else rng.randint(1, 2)
            body = _wrap(" ".join(rng.choice(_SENTENCES) for _ in range(n)))
            if name in ("findings", "impression"):
                out += [f" {header}: ", " "] + [f" {x}" for x in body] + [" "]
            else:
                out += [f" {header}:  {body[0]}"] + [f" {x}" for x in body[1:]] + [" "]
    text = "\n".join(out) + "\n"
    if rng.random() < 0.03:
        addendum = " ADDENDUM:  Findings discussed with Dr. ___ at ___.\n \n"
        text = " " * 33 + "FINAL ADDENDUM\n" + addendum + " " + "_" * 78 + "\n" + text
    if rng.random() < 0.01:
        text = text.replace("\n", "\r\n")
    return text


def bench_parse(n: int) -> None:
    rng = random.Random(0)
    reports = [make_report(rng) for _ in range(n)]
    mb = sum(len(r) for r in reports) / 1e6
    t0 = time.perf_counter()
    with_text = 0
    for text in reports:
        if parse_report(text):
            with_text += 1
    dt = time.perf_counter() - t0
    print(f"parse_report: {n} reports ({mb:.0f} MB) in {dt:.2f} s on one core")
    print(f"  {n / dt:,.0f} reports/s per core (goal >= 20,000); {with_text} non-empty")


def write_tree(root: Path, n: int) -> None:
    rng = random.Random(1)
    for i in range(n):
        subject = 10_000_000 + i // 3
        study = 50_000_000 + i
        pdir = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        # Half in the official place, half inside the study folder.
        path = pdir / f"s{study}.txt" if i % 2 == 0 else pdir / f"s{study}" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make_report(rng))


def _timed(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t0


def bench_files(n: int, workers: int) -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    t0 = time.perf_counter()
    write_tree(WORK / "raw", n)
    print(f"wrote {n} report files in {time.perf_counter() - t0:.1f} s under {WORK}")
    files = WORK / "raw" / "files"

    cat = _timed(
        ["sh", "-c", f"find {files} -name '*.txt' -print0 | xargs -0 cat > /dev/null"],
    )
    t0 = time.perf_counter()
    paths = [os.path.join(d, f) for d, _, fs in os.walk(files) for f in fs if f.endswith(".txt")]
    for p in paths:
        with open(p, "rb") as fh:
            fh.read()
    pyread = time.perf_counter() - t0

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    cmd = [sys.executable, "-m", "cxr", "--quiet", "reports", "--raw", str(WORK / "raw")]
    cmd += ["--out", str(WORK / "reports.parquet"), "--workers", str(workers)]
    whole = _timed(cmd, env=env)
    startup = _timed([sys.executable, "-c", "import cxr.cli, polars"], env=env)
    print(
        f"reading {len(paths)} files: find|xargs cat {cat:.2f} s, Python walk+read {pyread:.2f} s"
    )
    print(f"cxr reports --workers {workers}: {whole:.2f} s ({n / whole:,.0f} reports/s), of which")
    print(
        f"  interpreter + imports about {startup:.2f} s; ratio to Python read {whole / pyread:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-reports", type=int, default=N_REPORTS)
    ap.add_argument("--n-files", type=int, default=30_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    bench_parse(args.n_reports)
    bench_files(args.n_files, args.workers)


if __name__ == "__main__":
    main()

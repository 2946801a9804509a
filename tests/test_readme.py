"""The README's two sequences, run command by command as a newcomer would type them: the demo
(`make demo`'s steps) and the real-data guide, the latter against the local fake PhysioNet of
tests/test_download.py. Each step must succeed on what the step before it left, which is what
"the stages meet" means; a step the README skipped (the manifest before `download subset`) or
a default that does not carry over (the cache size train looks for) fails here.

The commands run as written. For speed the test appends a few options (`FASTER`): fewer demo
patients, fewer epochs, fewer bootstrap resamples, and a small CPU model instead of the GPU
recipe's DenseNet; and the download's base URLs point at the local server.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from cxr.cli import main
from cxr.mimic.demo import MARKER, write_demo

ROOT = Path(__file__).resolve().parents[1]
SEQUENCE = re.compile(r"<!-- sequence: ([a-z ]+)[^>]*-->\n```bash\n(.*?)```", re.S)

FASTER = {
    "demo": ["--n-patients", "30"],
    "train": ["epochs=2"],
    "evaluate": ["--bootstrap", "50"],
    "probe": ["--bootstrap", "50"],
    "compare": ["--bootstrap", "50"],
}
# The GPU recipe on the CPU: a small model, one epoch; the sizes (224 px from the 256 px cache)
# are the recipe's own.
CPU_RECIPE = ["model=cxr_small", "pretrained=", "epochs=1", "device=cpu", "batch_size=32"]


def sequence(name: str) -> list[str]:
    """The `cxr` command lines of the README's sequence `name`, comments stripped."""
    text = (ROOT / "README.md").read_text()
    found = {m.group(1).strip(): m.group(2) for m in SEQUENCE.finditer(text)}
    assert name in found, f"README.md has no '<!-- sequence: {name} -->' block"
    lines = []
    for line in found[name].splitlines():
        line = line.split(" #", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def run(line: str, extra: list[str], capsys) -> str:
    argv = shlex.split(line)
    assert argv[0] == "cxr", line
    code = main([*argv[1:], *extra])
    out = capsys.readouterr()
    assert code == 0, f"`{line}` failed after the steps before it:\n{out.err[-2000:]}"
    return out.out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh directory holding the repository's configs/, as a clone would, with no data."""
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copytree(ROOT / "configs", work / "configs")
    monkeypatch.chdir(work)
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    return work


@pytest.mark.slow
def test_the_demo_sequence_runs_step_by_step(workdir, capsys):
    lines = sequence("demo")
    assert [shlex.split(ln)[1] for ln in lines] == [
        "demo",
        "verify",
        "manifest",
        "verify",
        "preprocess",
        "train",
        "evaluate",
    ]
    printed = {}
    for line in lines:
        command = shlex.split(line)[1]
        printed[command] = run(line, FASTER.get(command, []), capsys)
    assert "synthetic demo data" in printed["train"]
    metrics = json.loads((workdir / "reports" / "demo" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["provenance"]["synthetic_demo"] is True
    assert "Synthetic demo data" in (workdir / "reports" / "demo" / "report.html").read_text()

    # The pretrained-models example continues from what the demo left.
    probe = sequence("probe")
    assert [shlex.split(ln)[1] for ln in probe] == ["embed", "probe", "compare"]
    for line in probe:
        command = shlex.split(line)[1]
        printed[command] = run(line, FASTER.get(command, []), capsys)
    result = json.loads((workdir / "reports" / "probe-demo" / "probe.json").read_text())
    assert len(result["fractions"]) == 3
    compared = workdir / "reports" / "probe-demo" / "compare-fraction-1.0-vs-demo"
    assert json.loads((compared / "compare.json").read_text())["labels"]


def _served(tree: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A demo tree as PhysioNet's two projects serve it: the CSVs and JPEGs (MIMIC-CXR-JPG), the
    reports at their official place (MIMIC-CXR). The demo's marker and checksum list are not
    served: the server lists what it serves."""
    jpg, reports = {}, {}
    for path in sorted(tree.rglob("*")):
        if not path.is_file() or path.name in (MARKER, "SHA256SUMS.txt"):
            continue
        rel = path.relative_to(tree)
        if rel.suffix == ".txt":
            if rel.parent.name == rel.stem:  # the data guide's place: inside the study folder
                rel = rel.parent.parent / rel.name
            reports[rel.as_posix()] = path.read_bytes()
        elif rel.name.startswith("mimic-cxr-2.0.0-") or rel.suffix == ".jpg":
            jpg[rel.as_posix()] = path.read_bytes()
    return jpg, reports


@pytest.mark.slow
def test_the_real_data_sequence_runs_step_by_step(workdir, tmp_path, monkeypatch, capsys):
    from test_download import PASSWORD, USER, FakePhysioNet

    write_demo(tmp_path / "physionet", n_patients=30, seed=2, progress=False)
    server = FakePhysioNet(*_served(tmp_path / "physionet"))
    server.start()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NETRC", raising=False)
    lines = sequence("real data")
    assert lines[0].startswith("export PHYSIONET_USERNAME=")
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
    local = {
        "metadata": ["--base-url", server.url("/jpg/")],
        "subset": [
            "--base-url",
            server.url("/jpg/"),
            "--reports-base-url",
            server.url("/reports/"),
        ],
    }
    steps = [(*shlex.split(ln)[1:3], "")[:2] for ln in lines[1:]]
    assert [s[0] for s in steps] == [
        "download",
        "manifest",
        "download",
        "verify",
        "manifest",
        "preprocess",
        "train",
        "evaluate",
    ]
    try:
        for line, (command, what) in zip(lines[1:], steps, strict=True):
            extra = FASTER.get(command, [])
            if command == "download":
                extra = local[what]
            if command == "train":
                extra = CPU_RECIPE
            printed = run(line, extra, capsys)
            if command == "manifest":
                assert "synthetic demo data" not in printed
    finally:
        server.stop()
    manifest = json.loads((workdir / "data" / "processed" / "manifest.json").read_text())
    assert manifest["reports_found"] == manifest["counts"]["total"]["studies"]  # second run
    run_dir = workdir / "models" / "densenet121-224"
    assert (run_dir / "best.pt").is_file()
    metrics = json.loads((workdir / "reports" / "densenet121-224" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["provenance"]["synthetic_demo"] is False

"""The logic of `benchmarks/gpu_check.sh`: every CUDA path of cxr, run once on demo data.

The shell script is a thin driver; everything it decides lives here, so that it can be tested on
a machine without a GPU (tests/test_gpu_check.py). Only the standard library is imported at
module level: `probe` runs with the GPU machine's bare Python, before anything is installed.

    python benchmarks/gpu_check.py probe                # exit 0: a CUDA GPU torch can use
    python benchmarks/gpu_check.py requirements         # what cxr needs besides torch/torchvision
    python benchmarks/gpu_check.py wheels-missing DIR   # requirements no wheel in DIR provides
    python benchmarks/gpu_check.py install-plan DIR     # the wheels of DIR this Python lacks
    python benchmarks/gpu_check.py run --work DIR       # the steps, each figure, a summary
    python benchmarks/gpu_check.py compare-predictions A.csv B.csv --max-diff 0.01

Exit status (the shell script passes it on): 0 every step passed, 1 a step failed or was
skipped, 2 the set-up failed (no torch, wheels missing, install failed), 3 no CUDA GPU here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_SETUP, EXIT_NO_GPU = 0, 1, 2, 3
BUDGET_S = 540  # the whole run stays inside one 10-minute command, set-up included
MIN_STEP_S = 10  # a step that would get less time than this is skipped, not started

# What the GPU machine's own torch installation provides (torch, torchvision and what they
# pull in): never brought as wheels, never installed over.
TORCH_PROVIDED = frozenset(
    {
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "filelock",
        "typing-extensions",
        "sympy",
        "mpmath",
        "networkx",
        "jinja2",
        "markupsafe",
        "fsspec",
        "setuptools",
        "triton",
    }
)
TORCH_PROVIDED_PREFIXES = ("nvidia-", "cuda-")
# The interpreter the wheels are for (the GPU machine's) when evaluating environment markers.
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_provided(name: str) -> bool:
    name = normalize(name)
    return name in TORCH_PROVIDED or name.startswith(TORCH_PROVIDED_PREFIXES)


# --------------------------------------------------------------------------- requirements


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """cxr's run-time requirements (as pyproject.toml states them) less those torch provides."""
    project = tomllib.loads(pyproject.read_text())["project"]
    # The models extra too: cxr embed and cxr evaluate --model run on the GPU machine.
    deps = project["dependencies"] + project.get("optional-dependencies", {}).get("models", [])
    out = []
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep.strip())
        if name and not torch_provided(name.group(0)):
            out.append(dep.strip())
    return out


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip vendors it; any Python with pip has it
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import parse_wheel_filename
    return Requirement, parse_wheel_filename


def wheel_requires(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]  # the headers end at the first blank line
    return [
        ln.split(":", 1)[1].strip() for ln in head.splitlines() if ln.startswith("Requires-Dist:")
    ]


def read_freeze(text: str) -> dict[str, str]:
    """`pip freeze` output -> {normalized name: version}; lines without `==` are left out."""
    out = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not name.startswith("#"):
            out[normalize(name)] = version.strip()
    return out


def plan_wheels(
    wheel_dir: Path,
    roots: Sequence[str],
    have: dict[str, str] | None = None,
    env: dict[str, str] | None = TARGET_ENV,
) -> tuple[list[Path], list[str]]:
    """(the wheels of `wheel_dir` to install, the requirements none of them satisfies).

    The closure of `roots` over the wheels' own requirements, with environment markers evaluated
    for `env` (the GPU machine's interpreter; None: the running one) and extras off, leaving out
    what torch provides and what `have` ({name: version} installed there) already has in a
    version every requirement on it accepts; what such a package needs in turn is there too.
    """
    Requirement, parse_wheel_filename = _packaging()
    from_wheels = {}
    for whl in sorted(Path(wheel_dir).glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(whl.name)
        from_wheels[normalize(str(name))] = (version, whl)
    have_versions = {}
    for name, text in (have or {}).items():
        try:
            have_versions[normalize(name)] = _version(text)
        except ValueError:
            continue  # a version packaging cannot parse: bring a wheel

    def accepts(reqs, version) -> bool:
        return all(r.specifier.contains(version, prereleases=True) for r in reqs)

    marker_env = None if env is None else dict(env)
    covered = set(have_versions)  # until a requirement refuses the installed version
    while True:
        wanted: dict[str, list] = {}  # name -> the requirements on it
        stack = [Requirement(r) for r in roots]
        opened = set()
        while stack:
            req = stack.pop()
            if req.marker is not None and not req.marker.evaluate(marker_env or {"extra": ""}):
                continue
            name = normalize(req.name)
            if torch_provided(name):
                continue
            wanted.setdefault(name, []).append(req)
            if name in from_wheels and name not in covered and name not in opened:
                opened.add(name)
                stack += [Requirement(r) for r in wheel_requires(from_wheels[name][1])]
        refused = {n for n in covered & wanted.keys() if not accepts(wanted[n], have_versions[n])}
        if not refused:
            break
        covered -= refused
    install, missing = [], []
    for name, reqs in sorted(wanted.items()):
        if name in covered:
            continue
        if name in from_wheels and accepts(reqs, from_wheels[name][0]):
            install.append(from_wheels[name][1])
        else:
            spec = ",".join(sorted({str(s) for r in reqs for s in r.specifier}))
            missing.append(f"{name}{spec}")
    return install, missing


def wheels_missing(
    wheel_dir: Path, roots: Sequence[str], have: dict[str, str] | None = None
) -> list[str]:
    """Requirements (name and combined specifier) that no wheel in `wheel_dir` satisfies, for the
    GPU machine's interpreter (TARGET_ENV), given what it has (`have`, from its `pip freeze`).
    Empty: the folder is complete."""
    return plan_wheels(wheel_dir, roots, have)[1]


def installed() -> dict[str, str]:
    """{name: version} of every distribution the running interpreter has."""
    from importlib import metadata

    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalize(name), dist.version)
    return out


def _version(text: str):
    try:
        from packaging.version import Version
    except ImportError:
        from pip._vendor.packaging.version import Version
    try:
        return Version(text)
    except Exception as exc:  # InvalidVersion, a ValueError in every packaging release
        raise ValueError(text) from exc


# --------------------------------------------------------------------------- probe


def probe(python: str = sys.executable, which=shutil.which, run=subprocess.run) -> tuple[int, str]:
    """(exit status, one line): is there a CUDA GPU that `python`'s torch can use?

    nvidia-smi is asked first: on a machine without it the answer comes at once, before torch
    (seconds to import) is touched.
    """
    smi = which("nvidia-smi")
    if smi is None:
        return EXIT_NO_GPU, "gpu_check: no CUDA GPU here (no nvidia-smi); nothing was run"
    try:
        listed = run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return EXIT_NO_GPU, f"gpu_check: no CUDA GPU here (nvidia-smi -L: {exc}); nothing was run"
    gpus = [ln for ln in listed.stdout.splitlines() if ln.startswith("GPU ")]
    if listed.returncode != 0 or not gpus:
        return EXIT_NO_GPU, "gpu_check: no CUDA GPU here (nvidia-smi lists none); nothing was run"
    code = (
        "import torch; ok = torch.cuda.is_available(); "
        "print(torch.__version__, torch.version.cuda, ok, "
        "torch.cuda.get_device_name(0) if ok else '-', sep='|')"
    )
    try:
        out = run([python, "-c", code], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return EXIT_SETUP, f"gpu_check: set-up failed: {python} cannot run torch ({exc})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return EXIT_SETUP, f"gpu_check: set-up failed: {python} cannot import torch ({last})"
    version, cuda, ok, name = out.stdout.strip().split("|")
    if ok != "True":
        return EXIT_NO_GPU, (
            f"gpu_check: no CUDA GPU here (nvidia-smi lists {len(gpus)}, but torch {version} "
            f"built for CUDA {cuda} sees none); nothing was run"
        )
    return EXIT_OK, f"gpu_check: {name}, torch {version}, CUDA {cuda}"


# --------------------------------------------------------------------------- steps


class StepFailed(Exception):
    """A step ran but what it produced is wrong (the message says what)."""


Figures = Callable[[str, Path], dict[str, str]]


def _no_figures(output: str, work: Path) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Step:
    name: str
    checks: str  # the CUDA path it exercises, in words
    argv: tuple[str, ...]
    timeout: int  # seconds
    needs: tuple[str, ...] = ()
    figures: Figures = _no_figures


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise StepFailed(f"{path.name} was not written")
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def train_figures(run: str, epochs: int, marker: str | None = None) -> Figures:
    """Figures of a training run: img/s of its last epoch, validate macro AUROC, epochs done."""

    def figures(output: str, work: Path) -> dict[str, str]:
        rows = _jsonl(work / "models" / run / "metrics.jsonl")
        if [r["epoch"] for r in rows] != list(range(1, epochs + 1)):
            raise StepFailed(
                f"metrics.jsonl has epochs {[r['epoch'] for r in rows]}, not 1-{epochs}"
            )
        if marker is not None and marker not in output:
            raise StepFailed(f"the output does not say {marker!r}")
        last = rows[-1]
        auroc = last.get("val_macro_auroc")
        out = {
            "img/s": f"{last['images_per_s']:,.0f}",
            "val AUROC": "n/a" if auroc is None else f"{auroc:.3f}",
        }
        if marker is not None:
            out["backend"] = marker
        return out

    return figures


def evaluate_figures(name: str) -> Figures:
    def figures(output: str, work: Path) -> dict[str, str]:
        path = work / "reports" / name / "metrics.json"
        if not path.is_file():
            raise StepFailed("metrics.json was not written")
        macro = json.loads(path.read_text())["macro"]["auroc"]
        return {"test macro AUROC": "n/a" if macro is None else f"{macro:.3f}"}

    return figures


def predict_figures(name: str, cams: bool) -> Figures:
    def figures(output: str, work: Path) -> dict[str, str]:
        table = work / "predict" / name / "predictions.csv"
        if not table.is_file():
            raise StepFailed("predictions.csv was not written")
        with open(table, newline="") as f:
            rows = sum(1 for _ in csv.DictReader(f))
        if rows == 0:
            raise StepFailed("predictions.csv has no rows")
        out = {"images": str(rows)}
        if cams:
            n = len(list((work / "predict" / name / "cam").rglob("*.png")))
            if n == 0:
                raise StepFailed("no Grad-CAM overlay was written")
            out["Grad-CAM overlays"] = str(n)
        return out

    return figures


_BENCH_FIGURES = {
    "model alone img/s": r"model alone \(.*?\): ([\d,]+) images/s",
    "end to end img/s": r"end to end \(.*?\): ([\d,]+) images/s",
    "ratio": r"ratio end to end / model alone: ([\d.]+)",
}


def bench_figures(device: str) -> Figures:
    def figures(output: str, work: Path) -> dict[str, str]:
        if f"device {device}," not in output:
            raise StepFailed(f"bench_train.py did not run on {device}")
        out = {}
        for label, pattern in _BENCH_FIGURES.items():
            found = re.search(pattern, output)
            if not found:
                raise StepFailed(f"bench_train.py printed no {label!r} figure")
            out[label] = found.group(1)
        return out

    return figures


def embed_figures(device: str) -> Figures:
    def figures(output: str, work: Path) -> dict[str, str]:
        if f"device {device}" not in output:
            raise StepFailed(f"bench_embed.py did not run on {device}")
        found = re.findall(r"^(\S+(?: \(image cache\))?)\s+([\d.]+) images/s", output, re.M)
        if not found:
            raise StepFailed("bench_embed.py printed no images/s figure")
        return {f"embed {name} img/s": value for name, value in found}

    return figures


def compare_figures(output: str, work: Path) -> dict[str, str]:
    found = re.search(r"max \|p_a - p_b\| = ([\d.e+-]+) over (\d+) values", output)
    if not found:
        raise StepFailed("no comparison figure printed")
    return {"max |p_cuda - p_cpu|": found.group(1), "values": found.group(2)}


_ENV_CODE = """
import torch
ok = torch.cuda.is_available()
print("torch", torch.__version__, "CUDA", torch.version.cuda)
if ok:
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
    print("nccl", torch.distributed.is_nccl_available())
"""


def env_figures(device: str) -> Figures:
    def figures(output: str, work: Path) -> dict[str, str]:
        found = re.search(r"torch (\S+) CUDA (\S+)", output)
        if not found:
            raise StepFailed("torch printed no version")
        out = {"torch": found.group(1), "CUDA": found.group(2)}
        if device == "cuda":
            gpu = re.search(r"device (.+) bf16 (\w+)", output)
            if not gpu:
                raise StepFailed("torch sees no CUDA device")
            out |= {"GPU": gpu.group(1), "bf16": gpu.group(2)}
            if "nccl True" not in output:
                raise StepFailed("this torch has no NCCL")
        return out

    return figures


def steps(work: Path, python: str = sys.executable, device: str = "cuda") -> list[Step]:
    """The check, in order; paths under `work`, every cxr command from the source tree.

    `device="cpu"` is a rehearsal of the same steps on a machine without a GPU (smaller models
    and images where the real sizes would take too long there): it checks that every command
    line and figure still fits the code, before GPU time is spent on it.
    """
    cuda = device == "cuda"
    w = str(work)
    data = f"{w}/data"
    cxr = (python, "-m", "cxr", "--data-dir", data)
    demo_cfg = str(REPO / "configs" / "demo.toml")
    dense_size = "224" if cuda else "64"
    bench = "--model densenet121 --size 224 --cache-size 256 --batch 256 --images 4096"
    embed = "--images 64 --batch-size 32 --workers 8 --device cuda"
    short: tuple[str, ...] = ()  # every batch of every epoch
    images = f"{data}/raw/files"
    top: tuple[str, ...] = ()
    if not cuda:
        bench = "--model cxr_small --size 64 --cache-size 64 --batch 8 --images 64 --steps 2"
        embed = "--images 2 --batch-size 2 --device cpu --sources cxr"
        short = ("limit_train_batches=2",)
        images = f"{data}/raw/files/p10"  # a tenth of the patients
        top = ("--top-k", "1")  # one Grad-CAM per image, not three

    def train(run: str, *overrides: str) -> tuple[str, ...]:
        return (
            *cxr, "train", "--config", demo_cfg, f"device={device}", *overrides, *short,
            "--out", f"{w}/models/{run}",
        )  # fmt: skip

    def evaluate(name: str, on: str) -> tuple[str, ...]:
        return (
            *cxr, "evaluate", "--checkpoint", f"{w}/models/bf16/best.pt", "--split", "test",
            "--bootstrap", "200", "--device", on, "--out", f"{w}/reports/{name}",
        )  # fmt: skip

    def predict(name: str, run: str) -> tuple[str, ...]:
        return (
            *cxr, "predict", "--checkpoint", f"{w}/models/{run}/best.pt", "--device", device,
            "--cam", *top, "--out", f"{w}/predict/{name}", images,
        )  # fmt: skip

    return [
        Step("environment", "torch, CUDA, the GPU, bf16 and NCCL support",
             (python, "-c", _ENV_CODE), 120, (), env_figures(device)),
        Step("demo data", "(CPU) cxr demo, 120 patients",
             (*cxr, "demo", "--n-patients", "120"), 120),
        Step("manifest", "(CPU) cxr manifest", (*cxr, "manifest"), 60, ("demo data",)),
        Step("preprocess", "(CPU) the 256 px image cache",
             (*cxr, "preprocess", "--size", "256"), 120, ("manifest",)),
        Step("train bf16", "bf16 autocast, channels_last, pinned non-blocking copies, eager",
             train("bf16", "amp=true", "channels_last=true", "compile=false", "epochs=3",
                   "stop_after_epochs=2"),
             120, ("preprocess",), train_figures("bf16", 2)),
        Step("resume", "--resume (the CUDA RNG state restored)",
             (*cxr, "train", "--resume", "--out", f"{w}/models/bf16"),
             90, ("train bf16",), train_figures("bf16", 3)),
        Step("train fp32", "no autocast, contiguous (NCHW) tensors",
             train("fp32", "amp=false", "channels_last=false", "compile=false", "epochs=2"),
             90, ("preprocess",), train_figures("fp32", 2)),
        Step("train compile", "torch.compile (inductor) with bf16 and channels_last",
             train("compile", "amp=true", "channels_last=true", "compile=true", "epochs=2"),
             240, ("preprocess",), train_figures("compile", 2)),
        Step("train densenet121", f"DenseNet-121 (timm) at {dense_size} px, bf16, channels_last",
             train("densenet121", "model='densenet121'", "pretrained=''",
                   f"image_size={dense_size}", "batch_size=32", "epochs=2"),
             150, ("preprocess",), train_figures("densenet121", 2)),
        Step("ddp", "torchrun, one process: process group, DDP wrapper, collectives",
             (python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
              "-m", "cxr", "--data-dir", data, "train", "--config", demo_cfg,
              f"device={device}", "epochs=2", *short, "--out", f"{w}/models/ddp"),
             150, ("preprocess",),
             train_figures("ddp", 2, marker="DDP nccl" if cuda else "DDP gloo")),
        Step("evaluate", f"evaluate on {device}", evaluate(device, device), 120,
             ("train bf16",), evaluate_figures(device)),
        Step("evaluate cpu", "(CPU) the same evaluation, to compare with",
             evaluate("cpu-reference", "cpu"), 120, ("train bf16",),
             evaluate_figures("cpu-reference")),
        Step("same probabilities", f"{device} and CPU probabilities agree (predictions.csv)",
             (python, str(Path(__file__).resolve()), "compare-predictions",
              f"{w}/reports/{device}/predictions.csv",
              f"{w}/reports/cpu-reference/predictions.csv", "--max-diff", "0.01"),
             60, ("evaluate", "evaluate cpu"), compare_figures),
        Step("predict", f"predict with Grad-CAM on {device} (small CNN)",
             predict("small", "bf16"), 120, ("train bf16",), predict_figures("small", True)),
        Step("predict densenet121", f"predict with Grad-CAM on {device} (DenseNet-121)",
             predict("densenet121", "densenet121"), 120, ("train densenet121",),
             predict_figures("densenet121", True)),
        Step("bench_train", "benchmarks/bench_train.py: DenseNet-121, batch 256, bf16, channels_last",
             (python, str(REPO / "benchmarks" / "bench_train.py"), *bench.split()),
             180, (), bench_figures(device)),
        Step("bench_embed", "benchmarks/bench_embed.py: cxr embed per source, stand-in weights",
             (python, str(REPO / "benchmarks" / "bench_embed.py"), *embed.split()),
             240, (), embed_figures(device)),
    ]  # fmt: skip


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    name: str
    status: str  # ok | FAILED | skipped
    seconds: float = 0.0
    figures: dict[str, str] = field(default_factory=dict)
    detail: str = ""  # why it failed or was skipped


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_step(step: Step, work: Path, env: dict[str, str], deadline: float) -> tuple[Result, str]:
    """Run one step (never raises): its result and its whole output."""
    timeout = min(step.timeout, deadline - time.monotonic())
    if timeout < MIN_STEP_S:
        return Result(step.name, "skipped", detail="out of time"), ""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            step.argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = (
            exc.stdout
            if isinstance(exc.stdout, str)
            else (exc.stdout or b"").decode(errors="replace")
        )
        return Result(
            step.name, "FAILED", time.monotonic() - t0, detail=f"timed out after {timeout:.0f} s"
        ), out
    except OSError as exc:
        return Result(step.name, "FAILED", time.monotonic() - t0, detail=f"cannot start: {exc}"), ""
    seconds = time.monotonic() - t0
    output = proc.stdout
    if proc.returncode != 0:
        last = (output.strip().splitlines() or ["no output"])[-1]
        return Result(
            step.name, "FAILED", seconds, detail=f"exit {proc.returncode}: {last}"
        ), output
    try:
        figures = step.figures(output, work)
    except StepFailed as exc:
        return Result(step.name, "FAILED", seconds, detail=str(exc)), output
    except (
        Exception
    ) as exc:  # a figure that cannot be read is a failure of that step, not of the check
        return Result(step.name, "FAILED", seconds, detail=f"{type(exc).__name__}: {exc}"), output
    return Result(step.name, "ok", seconds, figures), output


def run_all(
    plan: Sequence[Step],
    work: Path,
    env: dict[str, str],
    budget_s: float = BUDGET_S,
    log_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    runner=run_step,
) -> list[Result]:
    """Every step in order; one that failed does not stop the others, only those that need it."""
    deadline = time.monotonic() + budget_s
    results: dict[str, Result] = {}
    for step in plan:
        bad = [n for n in step.needs if results.get(n) is None or results[n].status != "ok"]
        if bad:
            result, output = Result(step.name, "skipped", detail=f"needs {', '.join(bad)}"), ""
        else:
            echo(f"== {step.name}: {step.checks}")
            result, output = runner(step, work, env, deadline)
        results[step.name] = result
        if log_dir is not None and output:
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{re.sub(r'[^a-z0-9]+', '-', step.name.lower())}.log").write_text(output)
        if result.status == "ok":
            shown = ", ".join(f"{k} {v}" for k, v in result.figures.items())
            echo(f"   ok in {result.seconds:.1f} s{': ' + shown if shown else ''}")
        elif result.status == "FAILED":
            echo(f"   FAILED after {result.seconds:.1f} s: {result.detail}")
            if output:
                echo(_tail(output))
        else:
            echo(f"== {step.name}: skipped ({result.detail})")
    return list(results.values())


def summary_lines(results: Iterable[Result]) -> list[str]:
    """The summary table and a closing count line ("N passed, N failed, N skipped")."""
    results = list(results)
    rows = [("step", "status", "seconds", "figures or reason")]
    for r in results:
        what = ", ".join(f"{k} {v}" for k, v in r.figures.items()) if r.status == "ok" else r.detail
        rows.append((r.name, r.status, f"{r.seconds:.1f}" if r.status != "skipped" else "-", what))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows
    ]
    lines.insert(1, "-" * max(len(ln) for ln in lines))
    count = {s: sum(r.status == s for r in results) for s in ("ok", "FAILED", "skipped")}
    lines.append(
        f"gpu_check: {count['ok']} passed, {count['FAILED']} failed, {count['skipped']} skipped"
    )
    return lines


def exit_status(results: Iterable[Result]) -> int:
    return EXIT_OK if all(r.status == "ok" for r in results) else EXIT_FAILED


def compare_predictions(a: Path, b: Path) -> tuple[float, int]:
    """Largest absolute difference between two predictions.csv files of the same rows."""

    def read(path: Path) -> dict[str, dict[str, str]]:
        with open(path, newline="") as f:
            return {row["dicom_id"]: row for row in csv.DictReader(f)}

    ra, rb = read(a), read(b)
    if ra.keys() != rb.keys() or not ra:
        raise StepFailed(f"{a.name} and {b.name} do not hold the same images")
    labels = [k for k in next(iter(ra.values())) if k not in ("dicom_id", "study_id")]
    diffs = [abs(float(ra[i][k]) - float(rb[i][k])) for i in ra for k in labels]
    return max(diffs), len(diffs)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--python", default=sys.executable, help="the Python whose torch is checked")
    sub.add_parser("requirements")
    p = sub.add_parser("wheels-missing")
    p.add_argument("wheel_dir", type=Path)
    p.add_argument("--have", type=Path, help="the GPU machine's `pip freeze` output")
    p = sub.add_parser("install-plan", help="the wheels this Python lacks, one path a line")
    p.add_argument("wheel_dir", type=Path)
    p = sub.add_parser("run")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps")
    p.add_argument("--logs", type=Path, default=None, help="where each step's output goes")
    p.add_argument(
        "--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a rehearsal, no GPU"
    )
    p.add_argument("--only", default="", help="comma-separated step names (default: all)")
    p = sub.add_parser("compare-predictions")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--max-diff", type=float, required=True)
    args = parser.parse_args(argv)

    if args.cmd == "probe":
        status, line = probe(args.python)
        print(line, file=sys.stderr if status else sys.stdout, flush=True)
        return status
    if args.cmd == "requirements":
        print("\n".join(requirements()))
        return EXIT_OK
    if args.cmd == "wheels-missing":
        have = read_freeze(args.have.read_text()) if args.have else None
        missing = wheels_missing(args.wheel_dir, ["pip", *requirements()], have)
        for req in missing:
            print(req)
        return EXIT_FAILED if missing else EXIT_OK
    if args.cmd == "install-plan":
        for pip_wheel in sorted(args.wheel_dir.glob("pip-*.whl"))[:1]:
            sys.path.append(str(pip_wheel))  # its vendored packaging, if nothing else has one
        plan, missing = plan_wheels(args.wheel_dir, requirements(), installed(), env=None)
        if missing:
            print(
                f"gpu_check: set-up failed: neither {sys.executable} nor {args.wheel_dir} has "
                f"{', '.join(missing)} (rerun benchmarks/gpu_wheels.sh)",
                file=sys.stderr,
            )
            return EXIT_SETUP
        for wheel in plan:
            print(wheel)
        return EXIT_OK
    if args.cmd == "compare-predictions":
        try:
            diff, n = compare_predictions(args.a, args.b)
        except (OSError, KeyError, ValueError, StepFailed) as exc:
            print(f"compare-predictions: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"max |p_a - p_b| = {diff:.2e} over {n} values (allowed {args.max_diff:g})")
        return EXIT_OK if diff <= args.max_diff else EXIT_FAILED
    # run
    work = args.work.resolve()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    plan = steps(work, device=args.device)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {s.name for s in plan}
        if unknown:
            print(f"gpu_check: no step named {', '.join(sorted(unknown))}", file=sys.stderr)
            return EXIT_SETUP
        plan = [s for s in plan if s.name in wanted]
    results = run_all(plan, work, env, args.budget, args.logs or work / "logs")
    lines = summary_lines(results)
    print("\n".join(["", *lines]), flush=True)
    (work / "summary.json").write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n")
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/gpu_check.sh and its logic (benchmarks/gpu_check.py), on a machine without a GPU:
the early exit, the step list against cxr's real command line, the runner, the figures, the
summary, and the wheel closure that gpu_wheels.sh fetches."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SYSTEM_PATH = "/usr/bin:/bin"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()


# --------------------------------------------------------------------------- no GPU


def _script(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": path,
        "PYTHON": sys.executable,
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_WHEELS": str(tmp_path / "wheels"),
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.skipif(
    shutil.which("nvidia-smi", path=SYSTEM_PATH) is not None, reason="has nvidia-smi"
)
def test_without_a_gpu_the_script_exits_at_once_in_one_line(tmp_path):
    t0 = time.monotonic()
    proc = _script(tmp_path, SYSTEM_PATH)
    assert time.monotonic() - t0 < 20  # no torch import, no install: a few hundred ms when idle
    assert proc.returncode == gc.EXIT_NO_GPU == 3
    assert proc.stdout == ""
    assert proc.stderr == "gpu_check: no CUDA GPU here (no nvidia-smi); nothing was run\n"
    assert not (tmp_path / "work").exists()  # nothing created, nothing installed


@pytest.mark.slow
def test_a_gpu_torch_cannot_use_is_no_gpu_too(tmp_path):
    """nvidia-smi lists a GPU but this torch (CPU-only here) sees none: the same exit, one line."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    proc = _script(tmp_path, f"{fake.parent}:{SYSTEM_PATH}")
    assert proc.returncode == 3, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("gpu_check: no CUDA GPU here (nvidia-smi lists 1, but torch ")
    assert line.endswith("sees none); nothing was run")
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_the_script_sets_up_and_runs_steps_in_a_cpu_rehearsal(tmp_path):
    """The shell script past the probe: no wheels folder, so this Python's packages are used, the
    import check passes, the chosen step runs and the summary closes the output."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_WHEELS": str(tmp_path / "no-wheels"),
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_ONLY": "environment",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gpu_check: a rehearsal on the CPU")
    assert any("no-wheels: using what" in ln for ln in lines)
    assert lines[-1] == "gpu_check: 1 passed, 0 failed, 0 skipped"
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert [(r["name"], r["status"]) for r in summary] == [("environment", "ok")]
    assert summary[0]["figures"]["torch"]
    env["GPU_CHECK_ONLY"] = "environment,no such step"
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "no step named no such step" in proc.stderr


class _Proc:
    def __init__(self, returncode=0, stdout="", stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _fake_run(smi: _Proc | Exception, torch: _Proc):
    def run(argv, **kw):
        if argv[-1] == "-L":
            if isinstance(smi, Exception):
                raise smi
            return smi
        return torch

    return run


H200 = _Proc(stdout="GPU 0: NVIDIA H200 (UUID: GPU-1)\n")
TORCH_OK = _Proc(stdout="2.11.0+cu130|13.0|True|NVIDIA H200\n")


@pytest.mark.parametrize(
    ("which", "smi", "torch", "status", "words"),
    [
        (None, H200, TORCH_OK, 3, "no nvidia-smi"),
        ("/x/nvidia-smi", _Proc(9, "", "NVIDIA-SMI has failed"), TORCH_OK, 3, "lists none"),
        ("/x/nvidia-smi", _Proc(0, "No devices were found\n"), TORCH_OK, 3, "lists none"),
        ("/x/nvidia-smi", OSError("exec format error"), TORCH_OK, 3, "exec format error"),
        ("/x/nvidia-smi", H200, _Proc(1, "", "ModuleNotFoundError: No module named 'torch'"), 2,
         "cannot import torch (ModuleNotFoundError"),
        ("/x/nvidia-smi", H200, _Proc(0, "2.11.0+cpu|None|False|-\n"), 3, "torch 2.11.0+cpu"),
        ("/x/nvidia-smi", H200, TORCH_OK, 0, "NVIDIA H200, torch 2.11.0+cu130, CUDA 13.0"),
    ],
)  # fmt: skip
def test_probe_decides_from_nvidia_smi_then_torch(which, smi, torch, status, words):
    got, line = gc.probe("python3", which=lambda name: which, run=_fake_run(smi, torch))
    assert (got, line.startswith("gpu_check: "), words in line) == (status, True, True), line


# --------------------------------------------------------------------------- the steps


def test_the_steps_cover_every_cuda_path(tmp_path):
    plan = gc.steps(tmp_path, "python3")
    names = [s.name for s in plan]
    assert len(set(names)) == len(names)
    for i, step in enumerate(plan):  # a step needs only steps that run before it
        assert set(step.needs) <= set(names[:i]), step.name
    lines = [" ".join(s.argv) for s in plan]

    def has(*words):
        return any(all(w in line for w in words) for line in lines)

    assert has("train", "device=cuda", "amp=true", "channels_last=true", "compile=false")
    assert has("train", "device=cuda", "amp=false", "channels_last=false")
    assert has("train", "device=cuda", "compile=true")
    assert has("train", "--resume")
    assert has("train", "device=cuda", "model='densenet121'", "image_size=224")
    assert has("torch.distributed.run", "--nproc_per_node 1", "device=cuda")
    assert has("evaluate", "--device cuda") and has("evaluate", "--device cpu")
    assert has("predict", "--device cuda", "--cam", "densenet121/best.pt")
    assert has("bench_train.py", "--model densenet121", "--size 224")
    assert has("bench_embed.py", "--device cuda")
    assert all(s.timeout <= gc.BUDGET_S for s in plan)


def _cxr_args(argv: tuple[str, ...]) -> list[str] | None:
    """The arguments cxr's own parser sees, for a step that runs cxr (directly or by torchrun)."""
    for i in range(len(argv) - 1):
        if argv[i : i + 2] == ("-m", "cxr"):
            return list(argv[i + 2 :])
    return None


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_command_line_fits_the_code(tmp_path, device):
    """Each cxr command line parses with cxr's parser and each training config is valid, and
    bench_train.py declares each option given to it: a renamed option fails here, not on the GPU."""
    from cxr.cli import build_parser
    from cxr.training.config import load_train_config

    parser = build_parser()

    def declared(script: str) -> set[str]:
        return {
            node.args[0].value
            for node in ast.walk(ast.parse((REPO / "benchmarks" / script).read_text()))
            if isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "add_argument"
            and isinstance(node.args[0], ast.Constant)
        }

    checked = 0
    for step in gc.steps(tmp_path, "python3", device):
        args = _cxr_args(step.argv)
        if args is not None:
            ns = parser.parse_args(args)  # SystemExit on any unknown option
            checked += 1
            if ns.command == "train" and not ns.resume:
                cfg = load_train_config(ns.config, ns.overrides)
                assert cfg.device == device
        elif step.argv[1].endswith(".py") and "benchmarks" in step.argv[1]:
            script = Path(step.argv[1]).name
            given = {a for a in step.argv[2:] if a.startswith("--")}
            assert given <= declared(script), given - declared(script)
    assert checked >= 12


# --------------------------------------------------------------------------- figures


def _metrics(work: Path, run: str, epochs: int) -> None:
    d = work / "models" / run
    d.mkdir(parents=True)
    rows = [
        {"epoch": e, "images_per_s": 1234.5 * e, "val_macro_auroc": 0.9 if e > 1 else None}
        for e in range(1, epochs + 1)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_train_figures(tmp_path):
    _metrics(tmp_path, "bf16", 2)
    figures = gc.train_figures("bf16", 2)
    assert figures("", tmp_path) == {"img/s": "2,469", "val AUROC": "0.900"}
    with pytest.raises(gc.StepFailed, match=r"epochs \[1, 2\], not 1-3"):
        gc.train_figures("bf16", 3)("", tmp_path)
    with pytest.raises(gc.StepFailed, match="not written"):
        gc.train_figures("other", 2)("", tmp_path)
    ddp = gc.train_figures("bf16", 2, marker="DDP nccl")
    assert ddp("train: ... on cuda x1 (DDP nccl), 7 steps/epoch", tmp_path)["backend"] == "DDP nccl"
    with pytest.raises(gc.StepFailed, match="DDP nccl"):
        ddp("train: ... on cuda x1, 7 steps/epoch", tmp_path)


BENCH_OUTPUT = """device cuda, model densenet121, batch 256, cache 256 -> 224 px
loader alone (1 worker, uint8 256 px): 151,234 images/s
loader + CPU augmentation to 224 px: 8,765 images/s
model alone (synthetic batch on cuda): 2,841 images/s (before/after: 2,830/2,841)
end to end (cache, loader, augmentation, step): 2,700 images/s
ratio end to end / model alone: 0.95
"""


def test_bench_figures():
    figures = gc.bench_figures("cuda")("" + BENCH_OUTPUT, Path("."))
    assert figures == {"model alone img/s": "2,841", "end to end img/s": "2,700", "ratio": "0.95"}
    with pytest.raises(gc.StepFailed, match="did not run on cuda"):
        gc.bench_figures("cuda")(BENCH_OUTPUT.replace("device cuda", "device cpu"), Path("."))
    with pytest.raises(gc.StepFailed, match="ratio"):
        gc.bench_figures("cuda")(BENCH_OUTPUT.rsplit("ratio", 1)[0], Path("."))


def test_bench_figures_match_what_bench_train_prints():
    """The patterns are the ones bench_train.py formats (its f-strings, read from the source)."""
    source = (REPO / "benchmarks" / "bench_train.py").read_text()
    for text in ("model alone (synthetic batch on", "end to end (cache, loader, augmentation, step)",
                 "ratio end to end / model alone:", 'f"device {device}, model'):  # fmt: skip
        assert text in source


@pytest.mark.slow
def test_embed_figures_read_what_bench_embed_prints(tmp_path):
    """bench_embed.py run for real on the CPU (the cxr source only, two images): its output
    gives one images/s figure per way of reading the images."""
    proc = subprocess.run(
        [
            *(sys.executable, str(REPO / "benchmarks" / "bench_embed.py"), "--images", "2"),
            *("--batch-size", "2", "--device", "cpu", "--sources", "cxr"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = gc.embed_figures("cpu")(proc.stdout, tmp_path)
    assert set(figures) == {"embed cxr img/s", "embed cxr (image cache) img/s"}
    assert all(float(v) > 0 for v in figures.values())
    with pytest.raises(gc.StepFailed):
        gc.embed_figures("cuda")(proc.stdout, tmp_path)


def _predictions(path: Path, rows: dict[str, list[float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["dicom_id,study_id,Edema,Fracture"]
    lines += [f"{d},50000001,{a},{b}" for d, (a, b) in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_predictions(tmp_path, capsys):
    a = _predictions(tmp_path / "a.csv", {"x": [0.5, 0.25], "y": [0.125, 1.0]})
    b = _predictions(tmp_path / "b.csv", {"y": [0.125, 0.995], "x": [0.502, 0.25]})
    assert gc.compare_predictions(a, b) == (pytest.approx(0.005), 4)
    assert gc.main(["compare-predictions", str(a), str(b), "--max-diff", "0.01"]) == 0
    out = capsys.readouterr().out
    assert gc.compare_figures(out, tmp_path) == {"max |p_cuda - p_cpu|": "5.00e-03", "values": "4"}
    assert gc.main(["compare-predictions", str(a), str(b), "--max-diff", "0.001"]) == 1
    c = _predictions(tmp_path / "c.csv", {"x": [0.5, 0.25]})
    with pytest.raises(gc.StepFailed, match="same images"):
        gc.compare_predictions(a, c)


def test_evaluate_and_predict_figures(tmp_path):
    (tmp_path / "reports" / "cuda").mkdir(parents=True)
    (tmp_path / "reports" / "cuda" / "metrics.json").write_text('{"macro": {"auroc": 0.8766}}')
    assert gc.evaluate_figures("cuda")("", tmp_path) == {"test macro AUROC": "0.877"}
    _predictions(tmp_path / "predict" / "small" / "predictions.csv", {"x": [0.1, 0.2]})
    with pytest.raises(gc.StepFailed, match="Grad-CAM"):
        gc.predict_figures("small", True)("", tmp_path)
    (tmp_path / "predict" / "small" / "cam").mkdir()
    (tmp_path / "predict" / "small" / "cam" / "x_Edema.png").write_bytes(b"")
    got = gc.predict_figures("small", True)("", tmp_path)
    assert got == {"images": "1", "Grad-CAM overlays": "1"}


# --------------------------------------------------------------------------- running


def _py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_the_runner_goes_on_after_a_failure_and_sums_up(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_STEP_S", 1)

    def figures(output, work):
        return {"answer": output.split()[-1]}

    def wrong(output, work):
        raise gc.StepFailed("the figure is missing")

    plan = [
        gc.Step("first", "prints", _py("print('answer 42')"), 30, (), figures),
        gc.Step("broken", "fails", _py("import sys; print('boom'); sys.exit(4)"), 30),
        gc.Step("after broken", "needs broken", _py("print(1)"), 30, ("broken",)),
        gc.Step("slow", "times out", _py("import time; time.sleep(30)"), 2),
        gc.Step("no figure", "ran, wrong output", _py("print(1)"), 30, ("first",), wrong),
        gc.Step("last", "still runs", _py("print('answer 7')"), 30, ("first",), figures),
    ]
    echoed = []
    results = gc.run_all(plan, tmp_path, dict(os.environ), 120, tmp_path / "logs", echoed.append)
    status = {r.name: (r.status, r.detail) for r in results}
    assert status == {
        "first": ("ok", ""),
        "broken": ("FAILED", "exit 4: boom"),
        "after broken": ("skipped", "needs broken"),
        "slow": ("FAILED", "timed out after 2 s"),
        "no figure": ("FAILED", "the figure is missing"),
        "last": ("ok", ""),
    }
    assert results[0].figures == {"answer": "42"} and results[-1].figures == {"answer": "7"}
    assert "boom" in "\n".join(echoed)  # a failure's output is shown
    assert (tmp_path / "logs" / "broken.log").read_text() == "boom\n"
    lines = gc.summary_lines(results)
    assert lines[0].split() == ["step", "status", "seconds", "figures", "or", "reason"]
    assert lines[-1] == "gpu_check: 2 passed, 3 failed, 1 skipped"
    row = next(ln for ln in lines if ln.startswith("first "))
    assert row.split()[1] == "ok" and row.endswith("answer 42")
    assert gc.exit_status(results) == 1
    assert gc.exit_status(results[:1]) == 0


def test_a_step_past_the_budget_is_skipped_not_started(tmp_path):
    plan = [gc.Step("late", "x", _py("print(1)"), 60)]
    [result] = gc.run_all(plan, tmp_path, dict(os.environ), budget_s=5, echo=lambda s: None)
    assert (result.status, result.detail) == ("skipped", "out of time")


# --------------------------------------------------------------------------- wheels


def _wheel(d: Path, name: str, version: str, *requires: str) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}\nbody\nRequires-Dist: not-a-header\n"
    lines = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(d / f"{dist}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", meta.format(name, version, lines))


def test_requirements_are_pyproject_s_less_torch():
    reqs = gc.requirements()
    names = {gc.normalize(r.split(">")[0].split("=")[0]) for r in reqs}
    assert {"polars", "pydicom", "timm", "scikit-learn", "tensorboard"} <= names
    assert {"transformers", "torchxrayvision"} <= names  # the models extra runs there too
    assert not names & {"torch", "torchvision", "numpy", "pillow"}


def test_wheels_missing_follows_the_closure(tmp_path):
    d = tmp_path
    roots = ["app>=1"]
    assert gc.wheels_missing(d, roots) == ["app>=1"]
    _wheel(d, "app", "1.2", "lib", "win-only; sys_platform == 'win32'", "extra-dep; extra == 'x'",
           "torch>=2", "nvidia-cudnn-cu13", "numpy>=1.26")  # fmt: skip
    assert gc.wheels_missing(d, roots) == ["lib"]
    _wheel(d, "lib", "2.0", "dep<1", "old-py; python_version < '3.12'")
    assert gc.wheels_missing(d, roots) == ["dep<1"]
    _wheel(d, "dep", "1.5")  # present, but refused by lib's requirement
    assert gc.wheels_missing(d, roots) == ["dep<1"]
    (d / "dep-1.5-py3-none-any.whl").unlink()
    _wheel(d, "dep", "0.9")
    assert gc.wheels_missing(d, roots) == []
    install, missing = gc.plan_wheels(d, roots, {"dep": "0.5"})
    assert [p.name for p in install] == ["app-1.2-py3-none-any.whl", "lib-2.0-py3-none-any.whl"]
    assert missing == []


def test_install_plan_lists_the_wheels_this_python_lacks(tmp_path, capsys):
    """On the GPU machine: what the running Python has is left out, what it lacks comes from the
    folder, and a requirement nothing meets is a set-up failure naming it."""
    have = gc.installed()
    assert "pytest" in have and "polars" in have
    _wheel(tmp_path, "polars", "0.1")  # too old for pyproject's polars>=1.0, and installed anyway
    assert gc.main(["install-plan", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""  # this Python has all of cxr's requirements
    install, missing = gc.plan_wheels(tmp_path, ["polars>=1.0", "not-there>=2"], {}, env=None)
    assert (install, missing) == ([], ["not-there>=2", "polars>=1.0"])


def test_wheels_missing_leaves_out_what_the_gpu_machine_has(tmp_path):
    _wheel(tmp_path, "app", "1.2", "lib>=2")
    have = gc.read_freeze("lib==2.5\npip==24.0\n# comment\nother @ file:///x\n")
    assert have == {"lib": "2.5", "pip": "24.0"}
    assert gc.wheels_missing(tmp_path, ["app", "pip"], have) == []
    # a version the requirements refuse does not count: the wheel is needed, and what it needs
    assert gc.wheels_missing(tmp_path, ["app", "pip"], {"lib": "1.0", "pip": "24.0"}) == ["lib>=2"]
    _wheel(tmp_path, "lib", "3.0", "sub")
    assert gc.wheels_missing(tmp_path, ["app"], {"lib": "1.0"}) == ["sub"]
    # lib is taken from the machine: its own requirements are the machine's business
    assert gc.wheels_missing(tmp_path, ["app"], {"lib": "2.5"}) == []

"""Training end to end on a tiny fixture with a shrunken config: outputs, resume, bad inputs, DDP."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cxr.cli import main
from cxr.core.errors import CxrError
from cxr.imaging.cache import PreprocessConfig, build_cache
from cxr.mimic.schema import LABELS
from cxr.training.checkpoint import load_checkpoint, model_from_checkpoint
from cxr.training.config import load_train_config
from cxr.training.train import masked_bce, train, validation_aurocs
from train_fixtures import make_fixture

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["model=cxr_small", "image_size=32", "batch_size=16", "lr=3e-3", "prefetch=0", "threads=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("train"), size=32)


def tiny(data, out, *extra):
    manifest, cache = data
    return load_train_config(
        None, [*TINY, f"manifest='{manifest}'", f"cache='{cache}'", f"out='{out}'", *extra]
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_trains_and_writes_the_contract(data, tmp_path, capsys):
    manifest, cache = data
    run = tmp_path / "run"
    rc = main(
        ["train", *TINY, "epochs=2", f"manifest={manifest}", f"cache={cache}", "--out", str(run)]
    )
    assert rc == 0
    assert {p.name for p in run.iterdir()} == {
        "best.pt",
        "last.pt",
        "config.toml",
        "metrics.jsonl",
        "tb",
    }
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_macro_auroc", "val_auroc", "images_per_s", "lr"} <= set(
        rows[0]
    )
    assert rows[-1]["val_macro_auroc"] > 0.6  # the planted squares are easy
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["arch"] == "cxr_small" and best["image_size"] == 32 and len(best["labels"]) == 14
    assert best["normalization"] == {"mean": 0.5, "std": 0.29}
    # the one block inference reads: what training saw, down to the cache's decoder
    # (cache_size was left at 0: the size of the cache actually read is recorded)
    method = json.loads((cache / "cache.json").read_text())["method"]
    assert best["preprocess"] == {
        "image_size": 32,
        "source_size": 32,
        "mean": 0.5,
        "std": 0.29,
        "in_chans": 1,
        "method": method,
    }
    assert method.startswith("pillow-draft+") and best["config"]["cache_size"] == 32
    assert "optimizer" in torch.load(run / "last.pt", weights_only=True)
    # nothing written identifies a patient
    subjects = {str(s) for s in pl.read_parquet(manifest)["subject_id"].to_list()}
    for path in [*run.rglob("*"), None]:
        text = (
            capsys.readouterr().out
            if path is None
            else path.read_bytes().decode("latin-1")
            if path.is_file()
            else ""
        )
        assert "subject_id" not in text
        assert not any(s in text for s in subjects)
    # a second fresh run into the same directory would overwrite a good best.pt: refused
    assert main(["train", *TINY, f"manifest={manifest}", f"cache={cache}", "--out", str(run)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_resume_is_exact(data, tmp_path):
    straight = train(tiny(data, tmp_path / "a", "epochs=4", "patience=0"))
    train(tiny(data, tmp_path / "b", "epochs=4", "patience=0", "stop_after_epochs=2"))
    assert [r["epoch"] for r in metrics(tmp_path / "b")] == [1, 2]
    resumed = train(tiny(data, tmp_path / "b", "epochs=4", "patience=0"), resume=True)
    assert straight["best_epoch"] == resumed["best_epoch"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    # Bitwise on the CPU (one thread): same batches, augmentations, schedule, optimizer state.
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["epoch"] for r in mb] == [1, 2, 3, 4]
    for ra, rb in zip(ma, mb, strict=True):
        del ra["images_per_s"], rb["images_per_s"]
        assert ra == rb


def test_nan_loss_stops_and_keeps_best(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=3", "stop_after_epochs=1"))
    before = (run / "best.pt").read_bytes()
    import cxr.training.train as t

    monkeypatch.setattr(t, "masked_bce", lambda logits, *a, **k: logits.sum() * float("nan"))
    with pytest.raises(CxrError, match=r"not finite.*left as it was"):
        train(tiny(data, run, "epochs=3"), resume=True)
    assert (run / "best.pt").read_bytes() == before


def test_worse_epochs_never_replace_best(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=3", "patience=0", "stop_after_epochs=1"))
    before = (run / "best.pt").read_bytes()
    import cxr.training.train as t

    # every later epoch scores worse than any real one
    monkeypatch.setattr(t, "validation_aurocs", lambda *a: dict.fromkeys(LABELS, 0.01))
    summary = train(tiny(data, run, "epochs=3", "patience=0"), resume=True)
    assert summary["best_epoch"] == 1 and summary["last_epoch"] == 3
    assert (run / "best.pt").read_bytes() == before
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_crash_while_saving_keeps_the_old_best(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=3", "patience=0", "stop_after_epochs=1"))
    before = sorted(p.name for p in run.iterdir()), (run / "best.pt").read_bytes()
    import cxr.training.train as t

    monkeypatch.setattr(t, "validation_aurocs", lambda *a: dict.fromkeys(LABELS, 0.99))  # better

    def torn_save(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space"):
        train(tiny(data, run, "epochs=3", "patience=0"), resume=True)
    assert (sorted(p.name for p in run.iterdir()), (run / "best.pt").read_bytes()) == before
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # and it resumes from there


def test_validation_aurocs_study_mean_uncertain_left_out_blank_negative():
    # study 1 has two images (0.9, 0.1 -> 0.5); study 3 is uncertain; study 5 blank
    study_ids = np.array([1, 1, 2, 3, 4, 5])
    probs = np.array([[0.9, 0.3], [0.1, 0.3], [0.6, 0.3], [0.99, 0.3], [0.2, 0.3], [0.4, 0.3]])
    nan = np.nan
    raw = np.array([[1, 0], [1, 0], [0, 0], [-1, 0], [0, 0], [nan, 0]], dtype=np.float32)
    labels = ["Edema", "Fracture"]
    # Uncertain is left out and blank is negative, whatever the training policy did with them.
    aurocs = validation_aurocs(study_ids, probs, raw, labels)
    assert aurocs == {"Edema": pytest.approx(2 / 3), "Fracture": None}  # 0.5 vs 0.6, 0.2, 0.4


def test_resume_into_another_model_or_label_set(data, tmp_path):
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=1"))
    with pytest.raises(CxrError, match="another label set"):
        train(tiny(data, run, "epochs=2", "labels=['Edema', 'Atelectasis']"), resume=True)
    with pytest.raises(CxrError, match="checkpoint is a cxr_small"):
        train(tiny(data, run, "epochs=2", "model=resnet18"), resume=True)


def test_bad_inputs(data, tmp_path):
    manifest, _cache = data
    # no validate split
    df = pl.read_parquet(manifest).filter(pl.col("split") != "validate")
    no_val = tmp_path / "noval.parquet"
    df.write_parquet(no_val)
    with pytest.raises(CxrError, match="no validate split"):
        train(tiny(data, tmp_path / "r1", f"manifest='{no_val}'"))
    # cache built from another manifest
    other, _ = make_fixture(tmp_path / "other", size=32, seed=9)
    with pytest.raises(CxrError, match="another image set"):
        train(tiny(data, tmp_path / "r2", f"manifest='{other}'"))
    # unknown model: named before any data is read
    with pytest.raises(CxrError, match=r"model='vgg'.*densenet121"):
        train(tiny(data, tmp_path / "r4", "model=vgg", "cache='/nonexistent'"))
    # a GPU asked for where there is none
    if not torch.cuda.is_available():
        with pytest.raises(CxrError, match="no CUDA device"):
            train(tiny(data, tmp_path / "r5", "device='cuda'"))
    # nothing to resume
    with pytest.raises(
        CxrError, match=r"nothing to resume .*`cxr train --out .*` without --resume"
    ):
        train(tiny(data, tmp_path / "r3"), resume=True)


def test_label_without_positives_warns_and_is_left_out(tmp_path, capsys):
    manifest, cache = make_fixture(tmp_path / "d", size=32, seed=3)
    df = pl.read_parquet(manifest)
    # Fracture never positive in train (but still in validate)
    df = df.with_columns(
        pl.when((pl.col("split") == "train") & (pl.col("Fracture") == 1.0))
        .then(0.0)
        .otherwise(pl.col("Fracture"))
        .cast(pl.Float32)
        .alias("Fracture")
    )
    df.write_parquet(manifest)
    # the cache is rebuilt for the changed manifest, as `cxr preprocess --force` would
    build_cache(
        PreprocessConfig(manifest=manifest, cache_dir=cache, size=32, workers=1, force=True)
    )
    # pos_weight=auto too: a label without positives gets weight 1, not inf
    train(tiny((manifest, cache), tmp_path / "run", "epochs=1", "pos_weight='auto'"))
    assert "no positive train images for Fracture" in capsys.readouterr().err
    row = metrics(tmp_path / "run")[0]
    counted = [v for k, v in row["val_auroc"].items() if v is not None and k != "Fracture"]
    assert row["val_macro_auroc"] == pytest.approx(sum(counted) / len(counted))


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(data, tmp_path):
    manifest, cache = data
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "cxr",
        "train",
        *TINY,
        "epochs=2",
        f"manifest={manifest}",
        f"cache={cache}",
        "--out",
        str(run),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # rank 0 alone prints and writes: each line once, one event file, no stray temporary files
    # (not a terminal: epoch lines carry a timestamp)
    lines = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", ln) for ln in out.stdout.splitlines()]
    for line in ("train: ", "epoch 1/2: ", "epoch 2/2: ", "best epoch "):
        assert sum(ln.startswith(line) for ln in lines) == 1, out.stdout
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.pt", "config.toml", "last.pt", "metrics.jsonl", "tb"]
    assert len(list((run / "tb").iterdir())) == 1
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    # the same shapes as a single-process run: metrics, checkpoint keys and tensors
    single = tmp_path / "single"
    train(tiny(data, single, "epochs=2"))
    assert rows[0].keys() == metrics(single)[0].keys()
    assert rows[0]["val_auroc"].keys() == metrics(single)[0]["val_auroc"].keys()
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(single / "last.pt")
    assert a.keys() == b.keys()
    assert {k: v.shape for k, v in a["model"].items()} == {
        k: v.shape for k, v in b["model"].items()
    }
    # validation gathered every rank's share: the saved model, scored alone, gives the same AUROCs
    from cxr.mimic.policy import LabelPolicy
    from cxr.training.augment import eval_transform
    from cxr.training.data import CxrDataset, open_cache, read_manifest

    val = CxrDataset(read_manifest(manifest), open_cache(cache), "validate", LABELS, LabelPolicy())
    batch = val.batch(np.arange(len(val)))
    with torch.no_grad():
        logits = model_from_checkpoint(a)(eval_transform(batch.img, 32, 0.5, 0.29))
    pos = batch.positions.numpy()
    mine = validation_aurocs(
        val.study_ids[pos], torch.sigmoid(logits).numpy(), val.raw_labels[pos], LABELS
    )
    assert mine == pytest.approx(rows[-1]["val_auroc"], abs=1e-6)
    loss = masked_bce(logits, val.targets[batch.positions], val.mask[batch.positions])
    assert float(loss) == pytest.approx(rows[-1]["val_loss"], rel=1e-5)


def test_one_process_under_torchrun_runs_the_ddp_path(data, tmp_path, monkeypatch, capsys):
    """torchrun --nproc_per_node 1 (what a one-GPU machine can run) goes through the process
    group, the DDP wrapper and every collective, and trains what a plain process trains."""
    import socket

    import torch.distributed as dist

    single = train(tiny(data, tmp_path / "single", "epochs=2"))
    capsys.readouterr()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    ddp = train(tiny(data, tmp_path / "ddp", "epochs=2"))
    assert "(DDP gloo)" in capsys.readouterr().out
    assert not dist.is_initialized()  # the group it started is closed again
    assert ddp["best_epoch"] == single["best_epoch"]
    a, b = (
        load_checkpoint(tmp_path / "ddp" / "last.pt"),
        load_checkpoint(tmp_path / "single" / "last.pt"),
    )
    for key in b["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    assert metrics(tmp_path / "ddp")[-1]["val_auroc"] == pytest.approx(
        metrics(tmp_path / "single")[-1]["val_auroc"], abs=1e-5
    )


@pytest.mark.slow
def test_demo_pipeline_trains_with_the_demo_config(demo_raw, tmp_path, capsys):
    """The real commands on the demo tree (demo -> manifest -> preprocess -> train), with the
    demo config shrunken to 64 px and a few epochs: the planted signals are learned."""
    data = tmp_path / "data"
    assert main(["--quiet", "--data-dir", str(data), "manifest", "--raw", str(demo_raw)]) == 0
    assert (
        main(["--quiet", "--data-dir", str(data), "preprocess", "--size", "64", "--workers", "1"])
        == 0
    )
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
    run = tmp_path / "models" / "demo"
    args = ["--data-dir", str(data), "train", "--config", str(config), "image_size=64"]
    assert main([*args, "cache_size=64", "epochs=6", "threads=2", "--out", str(run)]) == 0
    rows = metrics(run)
    assert rows[-1]["val_macro_auroc"] > 0.7
    assert "subject_id" not in capsys.readouterr().out


# -- kills at every save ------------------------------------------------------------------------

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.toml")


class Killed(BaseException):
    """A stand-in for SIGKILL: no `except Exception` of the code under test catches it."""


def _saves_into(run: Path, monkeypatch, kill_at: int | None = None) -> list[str]:
    """Watch the renames that commit the run's files (every atomic write ends in one).

    With `kill_at`, the rename of that index never happens: its temporary file is left behind as
    a killed process would leave it, and Killed is raised.
    """
    names: list[str] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        dst_path = Path(dst)
        if dst_path.parent == run and dst_path.name in RUN_FILES:
            if kill_at is not None and len(names) == kill_at:
                stale = Path(src).with_name(Path(src).name.replace(".tmp", "x.tmp"))
                Path(stale).write_bytes(Path(src).read_bytes())
                raise Killed(dst_path.name)
            names.append(dst_path.name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return names


def _same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same result: checkpoints' tensors and state, metrics."""
    for name in ("last.pt", "best.pt"):
        ca, cb = load_checkpoint(a / name), load_checkpoint(b / name)
        assert ca["epoch"] == cb["epoch"], name
        assert ca["model"].keys() == cb["model"].keys()
        for key in ca["model"]:
            assert torch.equal(ca["model"][key], cb["model"][key]), (name, key)
    la, lb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert (la["best_epoch"], la["bad_epochs"], la["scheduler"]) == (
        lb["best_epoch"],
        lb["bad_epochs"],
        lb["scheduler"],
    )
    for sa, sb in zip(
        la["optimizer"]["state"].values(), lb["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma, mb = metrics(a), metrics(b)
    for row in (*ma, *mb):
        del row["images_per_s"]
    assert ma == mb
    assert not [p.name for p in b.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_kill_at_any_save_leaves_a_run_that_resume_completes(data, tmp_path, monkeypatch):
    """Kill the run at each rename that commits one of its files (and so between any two
    saves), leaving the temporary file a killed writer leaves; `--resume` then completes the
    run, and the result is the uninterrupted run's."""
    args = ("epochs=3", "patience=0")
    reference = tmp_path / "reference"
    with monkeypatch.context() as m:
        saves = _saves_into(reference, m)
        train(tiny(data, reference, *args))
    assert saves.count("last.pt") == 3 and "best.pt" in saves
    for k, name in enumerate(saves):
        run = tmp_path / f"killed-{k}"
        with monkeypatch.context() as m:
            _saves_into(run, m, kill_at=k)
            with pytest.raises(Killed):
                train(tiny(data, run, *args))
        assert list(run.glob(f".{name}.*.tmp")), "the kill leaves the temporary file"
        # a fresh run never overwrites what the killed one saved
        if (run / "best.pt").exists() or (run / "last.pt").exists():
            with pytest.raises(CxrError, match="--resume"):
                train(tiny(data, run, *args))
        train(tiny(data, run, *args), resume=True)
        _same_run(reference, run)


def test_resume_with_only_best_pt_starts_again(data, tmp_path):
    """A run directory holding only epoch 1's best.pt (an older cxr saved best.pt before last.pt):
    no epoch's full state exists, so resume starts again at epoch 1."""
    args = ("epochs=2", "patience=0")
    train(tiny(data, tmp_path / "reference", *args))
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=2", "patience=0", "stop_after_epochs=1"))
    (run / "last.pt").unlink()
    (run / "metrics.jsonl").unlink()
    (run / ".last.pt.abc123.tmp").write_bytes(b"torn")
    train(tiny(data, run, *args), resume=True)
    _same_run(tmp_path / "reference", run)


def test_resume_when_metrics_are_ahead_of_or_behind_last_pt(data, tmp_path):
    args = ("epochs=3", "patience=0")
    train(tiny(data, tmp_path / "reference", *args))
    run = tmp_path / "run"
    train(tiny(data, run, *args, "stop_after_epochs=2"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # ahead: a line of an epoch last.pt does not hold (and a line no one can read)
    ahead = json.loads(lines[-1]) | {"epoch": 3}
    (run / "metrics.jsonl").write_text("\n".join([*lines, json.dumps(ahead), "{torn"]) + "\n")
    train(tiny(data, run, *args), resume=True)
    _same_run(tmp_path / "reference", run)
    # behind: last.pt holds the lines, so a metrics.jsonl that lost epochs is rewritten
    run2 = tmp_path / "run2"
    train(tiny(data, run2, *args, "stop_after_epochs=2"))
    (run2 / "metrics.jsonl").write_text(lines[0] + "\n")
    train(tiny(data, run2, *args), resume=True)
    _same_run(tmp_path / "reference", run2)


def test_resume_rewrites_a_best_pt_the_kill_kept_from_being_saved(data, tmp_path):
    """Killed after last.pt of an epoch that was the best, before best.pt: last.pt holds that
    model, and resume writes best.pt from it before going on."""
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=1"))
    best = load_checkpoint(run / "best.pt")
    (run / "best.pt").unlink()
    train(tiny(data, run, "epochs=1"), resume=True)
    again = load_checkpoint(run / "best.pt")
    assert again["epoch"] == 1 and "optimizer" not in again
    assert all(torch.equal(best["model"][k], again["model"][k]) for k in best["model"])


@pytest.mark.slow
def test_sigkilled_process_resumes_from_the_command_line(data, tmp_path):
    """A real process dies (os._exit, as under SIGKILL: no cleanup) in the middle of writing
    each checkpoint of epoch 1; `cxr train --resume --out RUN` alone then completes the run."""
    manifest, cache = data
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parent}"}
    argv = [*TINY, "epochs=2", "patience=0", f"manifest={manifest}", f"cache={cache}"]
    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, "-m", "cxr", "-q", "train", *argv, "--out", str(reference)],
        env=env,
        check=True,
        timeout=300,
    )
    die = (
        "import os, sys, torch\n"
        "from cxr.cli import main\n"
        "target, real = sys.argv.pop(1), torch.save\n"
        "def save(obj, f, *a, **k):\n"
        "    real(obj, f, *a, **k)\n"
        "    if os.path.basename(str(f)).startswith(f'.{target}.'):\n"
        "        os._exit(9)  # the temporary file is written, the rename never happens\n"
        "torch.save = save\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for target in ("last.pt", "best.pt"):
        run = tmp_path / f"killed-in-{target}"
        killed = subprocess.run(
            [sys.executable, "-c", die, target, "-q", "train", *argv, "--out", str(run)],
            env=env,
            timeout=300,
        )
        assert killed.returncode == 9
        assert list(run.glob(f".{target}.*.tmp"))
        resumed = subprocess.run(
            [sys.executable, "-m", "cxr", "-q", "train", "--resume", "--out", str(run)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        _same_run(reference, run)


# -- the steps, one at a time -------------------------------------------------------------------


def _cpu():
    from cxr.training.train import Dist

    return Dist(0, 1, torch.device("cpu"))


def test_validate_scores_the_model_on_every_validate_image(data, tmp_path):
    from cxr.training.augment import eval_transform
    from cxr.training.train import setup, validate

    run_dir = tmp_path / "run"
    cfg = tiny(data, run_dir, "epochs=1")
    run, state = setup(cfg, False, _cpu())
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    val = validate(run, 1, state)
    # the same numbers from the whole split in one batch
    ds = run.val_ds
    batch = ds.batch(np.arange(len(ds)))
    with torch.no_grad():
        logits = run.model.eval()(eval_transform(batch.img, 32, cfg.mean, cfg.std))
    pos = batch.positions
    expected = validation_aurocs(
        ds.study_ids[pos.numpy()], torch.sigmoid(logits).numpy(), ds.raw_labels[pos.numpy()], LABELS
    )
    assert val["val_auroc"] == pytest.approx(expected, abs=1e-6)
    loss = masked_bce(logits, ds.targets[pos], ds.mask[pos])
    assert val["val_loss"] == pytest.approx(float(loss), rel=1e-5)
    counted = [v for k, v in expected.items() if v is not None and k not in run.one_class]
    assert val["val_macro_auroc"] == pytest.approx(float(np.mean(counted)), abs=1e-6)
    # validation changes no weights, and neither it nor setup writes anything
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert not run_dir.exists()


def test_one_epoch_steps_once_per_batch_and_returns_the_mean_loss(data, tmp_path, monkeypatch):
    import cxr.training.train as t

    cfg = tiny(data, tmp_path / "run", "epochs=2")
    run, state = t.setup(cfg, False, _cpu())
    losses: list[tuple[float, int]] = []
    real = t.masked_bce

    def recording(logits, targets, mask, pos_weight=None):
        loss = real(logits, targets, mask, pos_weight)
        losses.append((float(loss.detach()), len(logits)))
        return loss

    monkeypatch.setattr(t, "masked_bce", recording)
    before = [p.detach().clone() for p in run.model.parameters()]
    train_loss, images_per_s = t.train_one_epoch(run, 1, state)
    assert len(losses) == run.steps_per_epoch == run.scheduler.last_epoch > 1
    weighted = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert train_loss == pytest.approx(weighted, rel=1e-6)
    assert images_per_s > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, run.model.parameters(), strict=True))
    # an epoch depends on (seed, epoch) and the starting state alone: rerun, it is the same
    again, state2 = t.setup(cfg, False, _cpu())
    t.train_one_epoch(again, 1, state2)
    for a, b in zip(
        run.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    # a non-finite loss stops the epoch and names it
    monkeypatch.setattr(t, "masked_bce", lambda logits, *a, **k: logits.sum() * float("nan"))
    with pytest.raises(CxrError, match="loss is not finite at epoch 2, step"):
        t.train_one_epoch(run, 2, state)


def test_out_that_is_a_file_is_one_line(data, tmp_path, capsys):
    manifest, cache = data
    taken = tmp_path / "taken"
    taken.write_text("not a run")
    argv = ["train", *TINY, f"manifest={manifest}", f"cache={cache}", "--out", str(taken)]
    for extra in ([], ["--resume"]):
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a file; --out must be a directory" in err
    assert taken.read_text() == "not a run"


def test_a_run_resumes_and_evaluates_from_any_directory(data, tmp_path, monkeypatch):
    """config.toml records absolute inputs: `--resume` and `cxr evaluate` from another directory
    find the run's manifest and cache (relative ones pointed nowhere there)."""
    from cxr.training.config import read_toml

    manifest, cache = data
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    rel = [f"manifest={os.path.relpath(manifest)}", f"cache={os.path.relpath(cache)}"]
    argv = ["train", *TINY, "epochs=2", "stop_after_epochs=1", *rel, "--out", "models/r"]
    assert main(argv) == 0
    saved = read_toml(work / "models/r/config.toml")
    assert saved["manifest"] == str(manifest.absolute()) and saved["cache"] == str(cache.absolute())
    monkeypatch.chdir(elsewhere)
    run = work / "models" / "r"
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert [r["epoch"] for r in metrics(run)] == [1, 2]
    argv = ["evaluate", "--checkpoint", str(run / "best.pt"), "--bootstrap", "0", "--out", "ev"]
    assert main(argv) == 0
    evaluated = json.loads((elsewhere / "ev" / "metrics.json").read_text())
    assert evaluated["provenance"]["manifest"] == str(manifest.absolute())
    # the thresholds training recorded are the ones evaluate chooses on validate (its youden)
    best = load_checkpoint(run / "best.pt")
    assert best["views"] == ["PA"]
    chosen = 0
    for label, m in evaluated["labels"].items():
        point = m["operating_points"]["youden"]
        if point["source"] == "validate":
            chosen += 1
            assert best["thresholds"]["youden"][label] == pytest.approx(
                point["threshold"], abs=1e-5
            )
    assert chosen >= 5


def test_resuming_a_finished_run_trains_nothing(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(data, run, "epochs=1"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    summary = train(tiny(data, run, "epochs=1"), resume=True)
    assert summary["last_epoch"] == 1
    assert "the run is complete (epoch 1 of 1, its last epoch)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_progress_moves_every_step_and_logs_one_timestamped_line_per_epoch(
    data, tmp_path, monkeypatch, capsys
):
    """The bar used to move every 10 steps (0% for a while, then 71%), validation showed
    nothing, and a log (not a terminal) got no time per epoch."""
    import cxr.training.train as train_mod

    updates: dict[str, list[int]] = {}

    class Recorder:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def add_task(self, description, total=None, **fields):
            updates[description] = [total]
            return description

        def update(self, task, completed=None, **fields):
            updates[task].append(completed)

        def advance(self, task, n=1):
            updates[task].append(updates[task][-1] + n if len(updates[task]) > 1 else n)

    monkeypatch.setattr(train_mod, "make_progress", lambda *columns: Recorder())
    train(tiny(data, tmp_path / "run", "epochs=2", "batch_size=8"))
    steps, *moves = updates["epoch 1/2"]
    assert steps >= 5 and moves == list(range(1, steps + 1))  # every step
    batches, *seen = updates["validate 1/2"]
    assert batches >= 1 and seen == list(range(1, batches + 1))
    out = capsys.readouterr().out  # captured: not a terminal
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    for epoch in (1, 2):
        pattern = rf"^{stamp} epoch {epoch}/2: train loss .*, \d+\.\d s, [\d,]+ img/s$"
        assert re.search(pattern, out, re.M), out

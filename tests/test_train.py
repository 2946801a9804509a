"""Training end to end on a tiny fixture with a shrunken config: outputs, resume, bad inputs, DDP."""

import json
import os
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
    with pytest.raises(CxrError, match="another manifest"):
        train(tiny(data, tmp_path / "r2", f"manifest='{other}'"))
    # unknown model: named before any data is read
    with pytest.raises(CxrError, match=r"model='vgg'.*densenet121"):
        train(tiny(data, tmp_path / "r4", "model=vgg", "cache='/nonexistent'"))
    # a GPU asked for where there is none
    if not torch.cuda.is_available():
        with pytest.raises(CxrError, match="no CUDA device"):
            train(tiny(data, tmp_path / "r5", "device='cuda'"))
    # nothing to resume
    with pytest.raises(CxrError, match="nothing to resume"):
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
    for line in ("train: ", "epoch 1: ", "epoch 2: ", "best epoch "):
        assert sum(ln.startswith(line) for ln in out.stdout.splitlines()) == 1, out.stdout
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

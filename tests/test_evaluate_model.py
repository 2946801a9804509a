"""`cxr evaluate --model`: a published model scored exactly as a checkpoint (same rows, protocol,
fingerprints, report), its missing labels named, and `cxr compare` next to a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from _embed_fixtures import GridClassifier, GridSource
from _eval_fixtures import make_data
from cxr.cli import main
from cxr.mimic.schema import LABELS


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("evmodel") / "data")


@pytest.fixture
def stand_in(monkeypatch):
    """`open_source` answers the stand-in classifier for `test:gridcls`, an encoder for `test:grid`."""
    import cxr.pretrained.registry as registry

    opened = []

    def fake_open(spec, weights=None, device="cpu"):
        opened.append((spec, weights))
        return GridClassifier() if spec == "test:gridcls" else GridSource()

    monkeypatch.setattr(registry, "open_source", fake_open)
    return opened


def _evaluate(fx, out, *extra):
    return main(
        [
            *("--quiet", "--data-dir", str(fx.root), "evaluate", "--split", "test"),
            *("--out", str(out), "--bootstrap", "200", "--min-positives", "1", *extra),
        ]
    )


def test_published_model_scored_like_a_checkpoint_and_compared(fx, tmp_path, stand_in, capsys):
    model_out, ckpt_out = tmp_path / "model", tmp_path / "ckpt"
    assert _evaluate(fx, model_out, "--model", "test:gridcls", "--weights", "w.pt") == 0
    assert stand_in == [("test:gridcls", Path("w.pt"))]  # --weights reaches the source
    assert _evaluate(fx, ckpt_out, "--checkpoint", str(fx.checkpoint)) == 0
    m = json.loads((model_out / "metrics.json").read_text())
    c = json.loads((ckpt_out / "metrics.json").read_text())
    assert list(m["labels"]) == list(GridClassifier.LABELS)
    # The labels it lacks are named, with the reason, in the macro's left-out list.
    lacking = [lab for lab in LABELS if lab not in GridClassifier.LABELS]
    assert m["model"]["labels_not_in_model"] == lacking
    assert all("no output in test:gridcls" in m["macro"]["left_out"][lab] for lab in lacking)
    assert m["protocol"] == c["protocol"]
    assert m["provenance"]["model"] == "test:gridcls" and "checkpoint" not in m["provenance"]
    # Same rows as the checkpoint's evaluation: the fixture's unreadable JPEG is left out by both.
    assert m["counts"]["test"] == c["counts"]["test"]
    for label in GridClassifier.LABELS:
        assert m["labels"][label]["rows_fingerprint"] == c["labels"][label]["rows_fingerprint"]
    study = pl.read_csv(model_out / "predictions_study.csv")
    assert study.columns == ["study_id", *GridClassifier.LABELS]
    page = (model_out / "report.html").read_text()
    assert "test:gridcls" in page and "no output in test:gridcls" in page
    capsys.readouterr()

    cmp_out = tmp_path / "cmp"
    code = main(
        [
            *("--data-dir", str(fx.root), "compare", str(model_out), str(ckpt_out)),
            *("--out", str(cmp_out), "--bootstrap", "200"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((cmp_out / "compare.json").read_text())
    assert sorted(result["labels"]) == sorted(
        lab for lab in GridClassifier.LABELS if m["labels"][lab].get("auroc") is not None
    )
    assert all("not evaluated in" in result["labels_left_out"][lab] for lab in lacking)


def test_model_options_checked_in_one_line(fx, tmp_path, stand_in, capsys):
    out = tmp_path / "x"
    assert _evaluate(fx, out, "--checkpoint", str(fx.checkpoint), "--weights", "w.pt") == 1
    assert "--weights goes with --model" in capsys.readouterr().err
    # An encoder has no labels to score: it says what to run instead.
    assert _evaluate(fx, out, "--model", "test:grid") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cxr embed --model test:grid" in err and "cxr probe" in err
    with pytest.raises(SystemExit):
        _evaluate(fx, out, "--model", "test:gridcls", "--checkpoint", str(fx.checkpoint))
    assert "not allowed with" in capsys.readouterr().err


def test_view_browses_a_published_model_evaluation(fx, tmp_path, stand_in):
    """cxr view over a published model's evaluation: its labels only, outcomes per label, and a
    heatmap request answered with a reason instead of a checkpoint it does not have."""
    from starlette.testclient import TestClient

    from cxr.view.app import create_app
    from cxr.view.data import load_view_data
    from cxr.view.images import Pixels, find_cache

    out = tmp_path / "model"
    assert _evaluate(fx, out, "--model", "test:gridcls") == 0
    data = load_view_data(fx.manifest, [out], fx.root)
    pixels = Pixels(data, find_cache(fx.root, None), tmp_path / "heatmaps", "cpu")
    client = TestClient(create_app(data, pixels, "tok"))
    page = client.get("/?token=tok")
    assert page.status_code == 200
    study_id = pl.read_csv(out / "predictions_study.csv")["study_id"][0]
    study = client.get(f"/study/{study_id}")
    assert study.status_code == 200, study.text
    assert "Pleural Effusion" in study.text
    dicom = pl.read_csv(out / "predictions.csv").filter(pl.col("study_id") == study_id)["dicom_id"][
        0
    ]
    heat = client.get(f"/heatmap/0/{dicom}/0")
    assert heat.status_code == 404 and "not scored from a cxr checkpoint" in heat.text


@pytest.mark.slow
def test_a_torchxrayvision_stand_in_through_the_real_path_beside_a_checkpoint(fx, tmp_path, capsys):
    """No monkeypatching: a random torchxrayvision DenseNet saved whole, as published files are,
    loaded by `--weights` through the restricted unpickler, scored on the checkpoint's rows and
    compared with it on the labels both have."""
    import torch
    import torchxrayvision as xrv

    torch.manual_seed(0)
    weights = tmp_path / "mimic_ch.pt"
    torch.save(xrv.models.DenseNet(num_classes=18, in_channels=1), weights)
    model_out, ckpt_out = tmp_path / "xrv", tmp_path / "ckpt"
    spec = "xrv:densenet121-res224-mimic_ch"
    assert _evaluate(fx, model_out, "--model", spec, "--weights", str(weights)) == 0
    assert _evaluate(fx, ckpt_out, "--checkpoint", str(fx.checkpoint)) == 0
    m = json.loads((model_out / "metrics.json").read_text())
    c = json.loads((ckpt_out / "metrics.json").read_text())
    # mimic_ch has 11 of the 14 CheXpert labels; Effusion is scored as Pleural Effusion.
    assert "Pleural Effusion" in m["labels"] and len(m["labels"]) == 11
    assert set(m["model"]["labels_not_in_model"]) == {
        "No Finding",
        "Pleural Other",
        "Support Devices",
    }
    assert m["provenance"]["weights_sha256"] and m["counts"]["test"] == c["counts"]["test"]
    for label in m["labels"]:
        assert m["labels"][label]["rows_fingerprint"] == c["labels"][label]["rows_fingerprint"]
    capsys.readouterr()
    cmp_out = tmp_path / "cmp"
    args = ["--data-dir", str(fx.root), "compare", str(model_out), str(ckpt_out)]
    assert main([*args, "--out", str(cmp_out), "--bootstrap", "100"]) == 0
    result = json.loads((cmp_out / "compare.json").read_text())
    assert set(result["labels"]) <= set(m["labels"]) and result["labels"]

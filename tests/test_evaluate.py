"""`cxr evaluate` end to end on a tiny data root: outputs, contents, HTML in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest

from _eval_fixtures import make_checkpoint, make_data
from cxr.cli import main
from cxr.mimic.schema import LABELS


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    fx = make_data(base / "data")
    out = base / "reports" / "run1"
    return fx, out


def _run_eval(fx, out, *extra):
    return main(
        [
            "--data-dir",
            str(fx.root),
            "evaluate",
            "--checkpoint",
            str(fx.checkpoint),
            "--out",
            str(out),
            "--bootstrap",
            "200",
            *extra,
        ]
    )


def test_evaluate_writes_every_output(evaluated, capsys):
    fx, out = evaluated
    assert _run_eval(fx, out) == 0
    captured = capsys.readouterr()
    assert "uncertain=ignore, missing=zeros" in captured.out
    assert "report.html" in captured.out
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["level"] == "study"
    assert m["label_policy"]["uncertain"] == "ignore" and m["label_policy"]["missing"] == "zeros"
    assert "Youden" in m["threshold_rule"]
    assert list(m["labels"]) == list(LABELS)
    for label in LABELS:  # each label under its exact name, as the issue says; same entry
        assert m[label] == m["labels"][label]
        assert {"auroc", "auroc_ci", "auprc", "prevalence", "n_pos", "n_neg"} <= set(m[label])
        assert {"sensitivity", "specificity", "ppv", "f1", "ece", "brier"} <= set(m[label])
    assert {"split", "level", "label_policy", "macro", "micro", "counts"} <= set(m)
    assert m["counts"]["test"]["images_excluded_unreadable"] == 1
    for entry in m["labels"].values():
        if entry["auroc"] is None:
            assert entry["reason"]
        else:
            lo, hi = entry["auroc_ci"]
            assert 0 <= lo <= hi <= 1
            assert entry["threshold"] is not None
    pred = pl.read_csv(out / "predictions.csv")
    assert pred.columns == ["dicom_id", "study_id", *LABELS]
    assert pred.height == m["counts"]["test"]["images"]
    study = pl.read_csv(out / "predictions_study.csv")
    assert study.columns == ["study_id", *LABELS]
    assert study.height == m["counts"]["test"]["studies"]
    for name in ("roc.png", "pr.png", "reliability.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Most confident errors" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_study_level_metrics_use_mean_of_images(evaluated):
    _fx, out = evaluated
    pred = pl.read_csv(out / "predictions.csv")
    study = pl.read_csv(out / "predictions_study.csv")
    mean = pred.group_by("study_id").agg(pl.col(LABELS[0]).mean()).sort("study_id")
    np.testing.assert_allclose(study[LABELS[0]].to_numpy(), mean[LABELS[0]].to_numpy(), atol=2e-6)


def test_image_level_scores_blank_as_negative_whatever_the_training_policy(evaluated, tmp_path):
    fx, _ = evaluated
    out = tmp_path / "img"
    assert (
        main(
            [
                "--quiet",
                "--data-dir",
                str(fx.root),
                "evaluate",
                "--checkpoint",
                str(fx.checkpoint),
                "--out",
                str(out),
                "--level",
                "image",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    manifest = pl.read_parquet(fx.manifest).filter(pl.col("split") == "test").head(-1)
    # The checkpoint trained Edema with missing=ignore: evaluation still scores its blanks as 0.
    edema = manifest["Edema"].to_numpy()
    assert m["labels"]["Edema"]["n_neg"] == int((edema == 0).sum() + np.isnan(edema).sum())
    at = manifest["Atelectasis"].to_numpy()
    assert m["labels"]["Atelectasis"]["n_neg"] == int((at == 0).sum() + np.isnan(at).sum())


def test_checkpoint_of_another_size_is_fit_from_the_cache(evaluated, tmp_path):
    fx, _ = evaluated
    ckpt = make_checkpoint(tmp_path / "m" / "best.pt", image_size=24)
    out = tmp_path / "r"
    code = main(
        [
            "--quiet",
            "--data-dir",
            str(fx.root),
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--bootstrap",
            "0",
        ]
    )
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["image_size"] == 24


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pt" in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    fx, out = evaluated
    report = out / "report.html"
    if not report.exists():
        assert _run_eval(fx, out) == 0
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium not installed on this machine (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            report.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10, "the screenshot of report.html is blank"


def test_gallery_report_excerpt_falls_back_to_findings():
    from cxr.evaluation.evaluate import _report_excerpt

    m = pl.DataFrame(
        {
            "dicom_id": ["a", "b", "c", "d"],
            "report_path": ["r1", "r2", "r3", None],
            "impression": ["Small effusion.", None, None, None],
            "findings": ["x", "Clear lungs.", None, None],
        }
    )
    assert _report_excerpt(m, "a") == ("Impression", "Small effusion.")
    assert _report_excerpt(m, "b") == ("Findings", "Clear lungs.")
    assert _report_excerpt(m, "c")[1] == "no impression or findings section"
    assert "not available" in _report_excerpt(m, "d")[1]


def test_evaluate_and_predict_feed_the_model_what_training_validated_on(evaluated, tmp_path):
    """A model trained at 24 px from the 32 px cache (cache_size=32): evaluate and predict both
    give exactly the probabilities of training's validation transform on the cached squares."""
    import torch
    from PIL import Image

    from cxr.imaging.cache import load_cache, rows_for
    from cxr.training.augment import eval_transform
    from cxr.training.checkpoint import load_checkpoint, model_from_checkpoint

    fx, _ = evaluated
    ckpt_path = make_checkpoint(tmp_path / "m" / "best.pt", image_size=24, cache_size=32)
    out = tmp_path / "r"
    args = ["--quiet", "--data-dir", str(fx.root), "evaluate", "--checkpoint", str(ckpt_path)]
    assert main([*args, "--out", str(out), "--bootstrap", "0"]) == 0
    pred = pl.read_csv(out / "predictions.csv").head(4)

    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    cache = load_cache(fx.cache)
    squares = np.asarray(cache.images[rows_for(cache, pred["dicom_id"].to_list())])
    norm = ckpt["normalization"]
    with torch.inference_mode():
        x = eval_transform(torch.from_numpy(squares.copy())[:, None], 24, norm["mean"], norm["std"])
        expected = torch.sigmoid(model(x)).numpy()
    np.testing.assert_allclose(pred.select(LABELS).to_numpy(), expected, atol=2e-6)

    files = tmp_path / "files"
    files.mkdir()
    for k, square in enumerate(squares):
        Image.fromarray(square).save(files / f"img{k}.png")
    csv_out = tmp_path / "p"
    assert (
        main(
            [
                "--quiet",
                "predict",
                "--checkpoint",
                str(ckpt_path),
                str(files),
                "--out",
                str(csv_out),
            ]
        )
        == 0
    )
    got = pl.read_csv(csv_out / "predictions.csv").sort("file").select(LABELS).to_numpy()
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_evaluating_validate_says_thresholds_come_from_the_same_split(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    out = tmp_path / "val"
    assert _run_eval(fx, out, "--split", "validate") == 0
    printed = capsys.readouterr().out
    assert "where the thresholds were also chosen" in " ".join(printed.split())
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "validate" and "same split" in m["threshold_rule"]
    assert list(m["counts"]) == ["validate"]
    assert "where the thresholds were also chosen" in (out / "report.html").read_text()

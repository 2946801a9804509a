"""`cxr evaluate` and `cxr compare` end to end on a tiny data root: the protocol, patient-bootstrap
intervals, fingerprints, operating points, radiologist labels, provenance, the HTML page."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest

from _eval_fixtures import (
    TEST_SEXES,
    make_checkpoint,
    make_data,
    write_radiologist_labels,
    write_variant,
)
from cxr.cli import main
from cxr.mimic.schema import LABELS

OTHER_POLICY = {"uncertain": "ones", "missing": "ignore"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    fx = make_data(base / "data")
    out = base / "reports" / "run1"
    assert _run_eval(fx, out, "--split", "test") == 0
    return fx, out


def _run_eval(fx, out, *extra, checkpoint=None, quiet=True):
    return main(
        [
            *(["--quiet"] if quiet else []),
            "--data-dir",
            str(fx.root),
            "evaluate",
            "--checkpoint",
            str(checkpoint or fx.checkpoint),
            "--out",
            str(out),
            "--bootstrap",
            "200",
            *extra,
        ]
    )


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _test_studies(fx) -> pl.DataFrame:
    """The test studies evaluation can score (the unreadable image's study keeps its other image
    only if it has one), one row per study, from the manifest and the cache."""
    cache_ok = pl.read_parquet(fx.cache / "index.parquet").filter(pl.col("ok")).select("dicom_id")
    rows = pl.read_parquet(fx.manifest).filter(pl.col("split") == "test")
    rows = rows.join(cache_ok, on="dicom_id", how="semi")
    return rows.group_by("study_id", maintain_order=True).first().sort("study_id")


@pytest.mark.slow
def test_evaluate_writes_every_output(evaluated, capsys):
    fx, out = evaluated
    assert _run_eval(fx, out, "--split", "test", "--bootstrap", "100", quiet=False) == 0
    m = _metrics(out)
    assert m["split"] == "test" and m["level"] == "study"
    assert m["protocol"] == {
        "split": "test",
        "level": "study",
        "uncertain": "exclude",
        "labels": "chexpert",
        "views": ["PA"],
        "blank": "negative",
        "thresholds_from": "validate split, CheXpert labels",
    }
    assert m["bootstrap"] == {"unit": "patient", "n": 100, "seed": 0, "interval": "95% percentile"}
    assert len(m["rows_fingerprint"]) == 64
    prov = m["provenance"]
    assert prov["checkpoint_sha256"] == hashlib.sha256(fx.checkpoint.read_bytes()).hexdigest()
    assert prov["manifest_sha256"] == hashlib.sha256(fx.manifest.read_bytes()).hexdigest()
    assert prov["cxr_version"] and prov["date"].startswith("20") and prov["synthetic_demo"] is False
    assert list(m["labels"]) == list(LABELS)
    studies = _test_studies(fx)
    assert m["counts"]["test"]["studies"] == studies.height
    assert m["counts"]["test"]["patients"] == studies["subject_id"].n_unique()
    assert m["counts"]["test"]["images_excluded_unreadable"] == 1
    for label in LABELS:  # each label under its exact name too; the same entry
        e = m[label]
        assert e == m["labels"][label]
        assert len(e["rows_fingerprint"]) == 64
        raw = studies[label].to_numpy()
        assert e["n_pos"] == int((raw == 1).sum())
        assert e["n_neg"] == int((raw == 0).sum() + np.isnan(raw).sum())  # blank is negative
        assert set(e["operating_points"]) == {"youden", "spec90", "spec95"}
        for point in e["operating_points"].values():
            if point["threshold"] is not None:
                assert point["tp"] + point["fn"] == e["n_pos"]
                assert point["fp"] + point["tn"] == e["n_neg"]
        assert e["tp"] == e["operating_points"]["youden"]["tp"]
        if e["auroc"] is None:
            assert e["reason"]
            continue
        for key in ("auroc", "auprc"):
            lo, hi = e[f"{key}_ci"]
            assert 0 <= lo <= hi <= 1
        assert e["sensitivity_ci"] is None or e["sensitivity_ci"][0] <= e["sensitivity_ci"][1]
    assert m["macro"]["n_labels"] == len(m["macro"]["labels"])
    assert set(m["macro"]["labels"]) | set(m["macro"]["left_out"]) == set(LABELS)
    assert set(m["validate"]) == set(LABELS)  # the validate split's figures beside the test's
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
    assert prov["checkpoint_sha256"] in page and m["rows_fingerprint"] in page
    assert "resamples of patients" in page and "Operating points" in page
    assert "Synthetic demo data" not in page
    assert "http://" not in page and "https://" not in page  # self-contained
    printed = capsys.readouterr().out
    assert "blank as negative, uncertain excluded" in printed and "report.html" in printed


@pytest.mark.slow
def test_default_split_is_validate_and_says_thresholds_come_from_it(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    out = tmp_path / "val"
    assert _run_eval(fx, out) == 0
    m = _metrics(out)
    assert m["split"] == "validate" and list(m["counts"]) == ["validate"]
    assert "operating points were also chosen" in m["note"]
    assert "operating points were also chosen" in (out / "report.html").read_text()


def test_study_level_metrics_use_mean_of_images(evaluated):
    _fx, out = evaluated
    pred = pl.read_csv(out / "predictions.csv")
    study = pl.read_csv(out / "predictions_study.csv")
    mean = pred.group_by("study_id").agg(pl.col(LABELS[0]).mean()).sort("study_id")
    np.testing.assert_allclose(study[LABELS[0]].to_numpy(), mean[LABELS[0]].to_numpy(), atol=2e-6)


@pytest.mark.slow
def test_training_policy_does_not_change_the_rows_but_the_protocol_does(evaluated, tmp_path):
    fx, out = evaluated
    other = make_checkpoint(tmp_path / "m2" / "best.pt", policy=OTHER_POLICY, seed=1)
    assert _run_eval(fx, tmp_path / "b", "--split", "test", checkpoint=other) == 0
    a, b = _metrics(out), _metrics(tmp_path / "b")
    assert a["model"]["training_label_policy"] != b["model"]["training_label_policy"]
    assert a["rows_fingerprint"] == b["rows_fingerprint"]
    for label in LABELS:
        assert a[label]["rows_fingerprint"] == b[label]["rows_fingerprint"]
        assert (a[label]["n_pos"], a[label]["n_neg"]) == (b[label]["n_pos"], b[label]["n_neg"])
    assert a["macro"]["auroc"] != b["macro"]["auroc"]  # other weights: another model
    # Uncertain as negative scores other rows: every fingerprint that involves an uncertain differs.
    assert _run_eval(fx, tmp_path / "neg", "--split", "test", "--uncertain", "negative") == 0
    neg = _metrics(tmp_path / "neg")
    assert neg["protocol"]["uncertain"] == "negative"
    assert neg["rows_fingerprint"] != a["rows_fingerprint"]
    studies = _test_studies(fx)
    for label in LABELS:
        has_uncertain = bool((studies[label].to_numpy() == -1).any())
        assert (neg[label]["rows_fingerprint"] != a[label]["rows_fingerprint"]) == has_uncertain
        if has_uncertain:
            assert neg[label]["n_neg"] > a[label]["n_neg"]


@pytest.mark.slow
def test_image_level_keeps_blank_negative_and_counts_images(evaluated, tmp_path):
    fx, out = evaluated
    assert _run_eval(fx, tmp_path / "img", "--split", "test", "--level", "image") == 0
    m = _metrics(tmp_path / "img")
    assert m["protocol"]["level"] == "image" and m["bootstrap"]["unit"] == "patient"
    cache_ok = pl.read_parquet(fx.cache / "index.parquet").filter(pl.col("ok")).select("dicom_id")
    images = pl.read_parquet(fx.manifest).filter(pl.col("split") == "test")
    images = images.join(cache_ok, on="dicom_id", how="semi")
    edema = images["Edema"].to_numpy()  # trained with missing=ignore: still scored as 0 here
    assert m["Edema"]["n_neg"] == int((edema == 0).sum() + np.isnan(edema).sum())
    assert m["rows_fingerprint"] != _metrics(out)["rows_fingerprint"]
    assert not (tmp_path / "img" / "predictions_study.csv").exists()


@pytest.mark.slow
def test_rare_labels_are_shown_flagged_and_left_out_of_the_macro(evaluated, tmp_path, capsys):
    fx, out = evaluated
    base = _metrics(out)
    pos = {label: base[label]["n_pos_studies"] for label in LABELS}
    cut = sorted(set(pos.values()))[len(set(pos.values())) // 2]
    assert _run_eval(fx, tmp_path / "r", "--split", "test", "--min-positives", str(cut)) == 0
    m = _metrics(tmp_path / "r")
    rare = {label for label, n in pos.items() if n < cut}
    assert rare and set(m["macro"]["left_out"]) >= rare
    for label in rare:
        assert "fewer than" in m[label]["excluded_from_macro"] or m[label].get("reason")
        assert m[label]["n_pos"] == base[label]["n_pos"]  # still shown with its figures
    assert (
        m["macro"]["n_labels"]
        == len(m["macro"]["labels"])
        == len(LABELS) - len(m["macro"]["left_out"])
    )
    expected = np.mean([m[label]["auroc"] for label in m["macro"]["labels"]])
    assert m["macro"]["auroc"] == pytest.approx(expected)
    lo, hi = m["macro"]["auroc_ci"]
    assert lo <= hi
    assert _run_eval(fx, tmp_path / "all", "--split", "test", "--min-positives", "1000") == 0
    none = _metrics(tmp_path / "all")
    assert none["macro"]["n_labels"] == 0 and none["macro"]["auroc"] is None
    assert set(none["macro"]["left_out"]) == set(LABELS)


@pytest.mark.slow
def test_radiologist_labels_score_the_studies_they_cover(evaluated, tmp_path):
    fx, out = evaluated
    written = write_radiologist_labels(fx)
    try:
        assert _run_eval(fx, tmp_path / "rad", "--split", "test", "--labels", "radiologist") == 0
    finally:
        (fx.raw / "mimic-cxr-2.1.0-test-set-labeled.csv").unlink()
    m = _metrics(tmp_path / "rad")
    assert m["protocol"]["labels"] == "radiologist"
    covered = _test_studies(fx).join(written.select("study_id"), on="study_id", how="semi")
    assert m["counts"]["test"]["studies"] == covered.height
    truth = written.join(covered.select("study_id"), on="study_id", how="semi")
    for label in LABELS:  # Lung Opacity came from the file's "Airspace Opacity" column
        values = truth[label].to_numpy()
        assert m[label]["n_pos"] == int((values == 1).sum()), label
        assert m[label]["n_neg"] == int((values == 0).sum() + np.isnan(values).sum()), label
    assert m["rows_fingerprint"] != _metrics(out)["rows_fingerprint"]
    study = pl.read_csv(tmp_path / "rad" / "predictions_study.csv")
    assert set(study["study_id"]) == set(covered["study_id"])


def test_radiologist_labels_need_the_file_and_the_test_split(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    assert _run_eval(fx, tmp_path / "x", "--split", "test", "--labels", "radiologist") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mimic-cxr-2.1.0-test-set-labeled.csv" in err
    assert _run_eval(fx, tmp_path / "x", "--labels", "radiologist") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split test" in err


def test_subgroups_in_every_output_small_cells_suppressed(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    manifest = write_variant(fx, "variant")
    out = tmp_path / "sg"
    code = _run_eval(
        fx,
        out,
        "--split",
        "test",
        "--manifest",
        str(manifest),
        "--subgroups",
        "sex,age_group,view_position",
        "--min-cell",
        "3",
        quiet=False,
    )
    assert code == 0
    m = _metrics(out)
    assert list(m["subgroups"]) == ["sex", "age_group", "view_position"]
    sex = m["subgroups"]["sex"]
    assert list(sex) == ["Female", "Male", "Unknown"]
    assert (
        sex["Female"]["patients"] == TEST_SEXES.count("Female") and not sex["Female"]["suppressed"]
    )
    for value in ("Male", "Unknown"):  # 2 and 1 patients, under 3
        assert sex[value] == {
            "patients": None,
            "studies": None,
            "suppressed": True,
            "underdiagnosis": None,
            "labels": None,
        }
    female = sex["Female"]
    assert set(female) == {"patients", "studies", "suppressed", "underdiagnosis", "labels"}
    assert set(female["underdiagnosis"]) == {"rate", "ci"}
    assert list(female["labels"]) == list(LABELS)
    for fig in female["labels"].values():
        assert set(fig) == {"auroc", "auroc_ci", "tpr", "fpr"}
    # every patient is in the one age group and the one view: both equal the whole split
    whole = m["subgroups"]["view_position"]["PA"]
    assert whole["patients"] == m["counts"]["test"]["patients"]
    assert whole["studies"] == m["counts"]["test"]["studies"]
    for label in LABELS:
        assert whole["labels"][label]["auroc"] == m[label]["auroc"]
        assert whole["labels"][label]["tpr"] == m[label]["sensitivity"]
    assert m["subgroup_options"]["min_cell"] == 3
    assert m["subgroup_gaps"]["sex"] == {"underdiagnosis": None, "auroc": {}}  # one shown value
    printed = capsys.readouterr().out
    assert "Male" in printed and "suppressed (fewer than 3 patients)" in printed
    page = (out / "report.html").read_text()
    assert "Subgroups: who does the model fail?" in page
    assert page.count('<tr class="suppressed">') == 2
    assert "AP films are mostly portable films" in page  # the view caveat
    for name in ("underdiagnosis", "subgroups_sex", "subgroups_age_group"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    # demographic columns never reach the predictions
    for name in ("predictions.csv", "predictions_study.csv"):
        assert "sex" not in pl.read_csv(out / name).columns


def test_subgroups_need_the_demographic_columns(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    assert _run_eval(fx, tmp_path / "x", "--subgroups", "sex") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cxr download demographics" in err
    assert _run_eval(fx, tmp_path / "x", "--subgroups", "sex,gender") == 1
    assert "unknown attribute 'gender'" in capsys.readouterr().err
    assert _run_eval(fx, tmp_path / "x", "--min-cell", "0") == 1
    assert capsys.readouterr().err.count("\n") == 1
    # "all": the attributes the manifest has (here only the view)
    assert _run_eval(fx, tmp_path / "all", "--subgroups", "all", "--bootstrap", "0") == 0
    assert list(_metrics(tmp_path / "all")["subgroups"]) == ["view_position"]


def test_negbio_labels_are_a_protocol_with_their_own_fingerprint(evaluated, tmp_path):
    from cxr.mimic.schema import NEGBIO_LABELLED, label_column

    fx, _ = evaluated
    manifest = write_variant(fx, "variant-nb")
    common = ("--split", "test", "--manifest", str(manifest))
    assert _run_eval(fx, tmp_path / "chexpert", *common) == 0
    assert _run_eval(fx, tmp_path / "negbio", *common, "--labels", "negbio") == 0
    a, b = _metrics(tmp_path / "chexpert"), _metrics(tmp_path / "negbio")
    assert b["protocol"]["labels"] == "negbio"
    assert b["protocol"]["thresholds_from"] == "validate split, NegBio labels"
    assert a["rows_fingerprint"] != b["rows_fingerprint"]
    # the studies scored: those with a NegBio row, against their NegBio values
    studies = _test_studies(fx).join(
        pl.read_parquet(manifest).select("study_id", pl.col("^negbio_.*$")).unique("study_id"),
        on="study_id",
    )
    covered = studies.filter(pl.col(NEGBIO_LABELLED))
    assert covered.height == studies.height - 1
    assert b["counts"]["test"]["studies"] == covered.height
    for label in LABELS:
        raw = covered[label_column(label, "negbio")].to_numpy()
        assert b[label]["n_pos"] == int((raw == 1).sum()), label
    # thresholds chosen on validate's NegBio labels, not its CheXpert ones
    thresholds = [
        (a[lab]["threshold"], b[lab]["threshold"]) for lab in LABELS if lab != "No Finding"
    ]
    assert any(x != y for x, y in thresholds)
    # compare refuses the two (different protocols), naming the label source
    from cxr.cli import main as cli_main

    assert cli_main(["compare", str(tmp_path / "chexpert"), str(tmp_path / "negbio")]) == 1


def test_negbio_labels_need_the_columns(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    assert _run_eval(fx, tmp_path / "x", "--labels", "negbio") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no NegBio labels" in err and "cxr manifest" in err


@pytest.mark.slow
def test_demo_manifest_gets_a_banner(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    marker = fx.raw / ".cxr-demo"
    marker.write_text("synthetic\n")
    try:
        assert (
            main(
                [
                    "--data-dir",
                    str(fx.root),
                    "evaluate",
                    "--checkpoint",
                    str(fx.checkpoint),
                    "--out",
                    str(tmp_path / "d"),
                    "--bootstrap",
                    "0",
                ]
            )
            == 0
        )
    finally:
        marker.unlink()
    assert _metrics(tmp_path / "d")["provenance"]["synthetic_demo"] is True
    assert "Synthetic demo data" in (tmp_path / "d" / "report.html").read_text()
    assert "Synthetic demo data" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoint_of_another_size_is_fit_from_the_cache(evaluated, tmp_path):
    fx, _ = evaluated
    ckpt = make_checkpoint(tmp_path / "m" / "best.pt", image_size=24)
    out = tmp_path / "r"
    assert _run_eval(fx, out, "--bootstrap", "0", checkpoint=ckpt) == 0
    assert _metrics(out)["model"]["image_size"] == 24


def test_bad_invocations_are_one_line_errors(evaluated, tmp_path, capsys):
    fx, _ = evaluated
    code = main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pt" in err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _run_eval(fx, a_file) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "existing file" in err
    assert _run_eval(fx, tmp_path / "o", "--min-positives", "-1") == 1
    assert capsys.readouterr().err.count("\n") == 1


# --------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def two_runs(evaluated, tmp_path_factory):
    """The same rows evaluated for two models trained under different label policies."""
    fx, out_a = evaluated
    base = tmp_path_factory.mktemp("cmp")
    other = make_checkpoint(base / "models" / "uones" / "best.pt", policy=OTHER_POLICY, seed=1)
    out_b = base / "reports" / "uones"
    assert _run_eval(fx, out_b, "--split", "test", checkpoint=other) == 0
    return fx, out_a, out_b, base


def test_compare_two_runs_trained_under_different_policies(two_runs, capsys):
    fx, out_a, out_b, base = two_runs
    out = base / "cmp"
    code = main(
        [
            "--data-dir",
            str(fx.root),
            "compare",
            str(out_a),
            str(out_b),
            "--out",
            str(out),
            "--bootstrap",
            "300",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert all(len(line) <= 80 for line in printed.splitlines() if "report:" not in line)
    c = json.loads((out / "compare.json").read_text())
    a, b = _metrics(out_a), _metrics(out_b)
    assert c["rows_fingerprint"] and c["protocol"] == a["protocol"]
    assert set(c["labels"]) | set(c["labels_left_out"]) == set(LABELS)
    assert c["labels"], "the shared labels"
    for label, d in c["labels"].items():
        assert d["delta_auroc"] == pytest.approx(a[label]["auroc"] - b[label]["auroc"])
        assert 0 <= d["p_delong"] <= 1
        lo, hi = d["delta_ci"]
        assert lo <= hi
        assert label in printed
    macro = c["macro"]
    assert macro["labels"] and set(macro["labels"]) <= set(a["macro"]["labels"])
    assert macro["delta_auroc"] == pytest.approx(
        np.mean([c["labels"][lab]["delta_auroc"] for lab in macro["labels"]])
    )
    assert macro["delta_ci"][0] <= macro["delta_ci"][1]
    assert (out / "compare.html").read_text().count("<tr>") >= len(c["labels"])


@pytest.mark.slow
def test_compare_refuses_different_protocols(two_runs, tmp_path, capsys):
    fx, out_a, _, _ = two_runs
    neg = tmp_path / "neg"
    assert _run_eval(fx, neg, "--split", "test", "--uncertain", "negative", "--bootstrap", "0") == 0
    capsys.readouterr()
    assert main(["--data-dir", str(fx.root), "compare", str(out_a), str(neg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different protocols" in err and "uncertain" in err


def test_compare_refuses_when_no_label_shares_its_rows(two_runs, tmp_path, capsys):
    fx, out_a, out_b, _ = two_runs
    changed = tmp_path / "changed"
    shutil.copytree(out_b, changed)
    m = _metrics(changed)
    for label in LABELS:
        m["labels"][label]["rows_fingerprint"] = "0" * 64
    (changed / "metrics.json").write_text(json.dumps(m))
    assert main(["--data-dir", str(fx.root), "compare", str(out_a), str(changed)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no label was evaluated on the same rows" in err
    # One label left out: it is named, the others are compared.
    m = _metrics(out_b)
    m["labels"]["Edema"]["rows_fingerprint"] = "0" * 64
    (changed / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "c"
    assert (
        main(["--data-dir", str(fx.root), "compare", str(out_a), str(changed), "--out", str(out)])
        == 0
    )
    c = json.loads((out / "compare.json").read_text())
    assert (
        c["labels_left_out"]["Edema"] == "rows fingerprints differ" and "Edema" not in c["labels"]
    )


def test_compare_refuses_a_changed_manifest(two_runs, tmp_path, capsys):
    fx, out_a, out_b, _ = two_runs
    df = pl.read_parquet(fx.manifest)
    flipped = df.with_columns(
        pl.when(pl.col("split") == "test")
        .then(1.0 - pl.col("Edema").fill_nan(0.0))
        .otherwise(pl.col("Edema"))
        .cast(pl.Float32)
        .alias("Edema")
    )
    other = tmp_path / "manifest.parquet"
    flipped.write_parquet(other)
    code = main(
        ["--data-dir", str(fx.root), "compare", str(out_a), str(out_b), "--manifest", str(other)]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest changed" in err


def test_no_subject_id_in_any_output(two_runs, capsys):
    fx, out_a, out_b, base = two_runs
    texts = []
    for d in (out_a, out_b, base):
        for path in d.rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("latin-1"))
    blob = "\n".join(texts)
    for subject in fx.subject_ids:
        assert str(subject) not in blob


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
    from cxr.evaluation.report import _report_excerpt

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


@pytest.mark.slow
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
    assert main([*args, "--out", str(out), "--bootstrap", "0", "--split", "test"]) == 0
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
                "--equalize",
                "none",  # the cache's squares are MIMIC-CXR-JPG pixels, equalized already
            ]
        )
        == 0
    )
    got = pl.read_csv(csv_out / "predictions.csv").sort("file").select(LABELS).to_numpy()
    np.testing.assert_allclose(got, expected, atol=2e-6)

"""`cxr probe`: nested patient subsets, the planted signal found, labels with one class left out
and said, evaluation directories that `cxr evaluate`'s readers and `cxr compare` accept, one-line
errors, and no subject_id anywhere."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from _probe_fixtures import NAME, PLANTED, RARE, make_probe_data
from cxr.cli import main
from cxr.evaluation.evaluate import read_evaluation
from cxr.evaluation.probe import (
    DEFAULT_C_GRID,
    DEFAULT_FRACTIONS,
    ProbeConfig,
    fraction_name,
    parse_fractions,
    parse_grid,
    patient_subsets,
    probe,
    standardise,
    subset_size,
    unit_index,
    unit_means,
)
from cxr.mimic.policy import LabelPolicy
from cxr.mimic.schema import LABELS
from cxr.pretrained.embeddings import META

FRACTIONS = (0.05, 1.0)


def _run(root, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--data-dir", str(root), "probe", "--bootstrap", "200", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    fx = make_probe_data(base / "data", unreadable=2, absent=3)
    out = base / "reports" / f"probe-{NAME}"
    code, stdout, stderr = _run(
        fx.root,
        "--embeddings",
        NAME,
        "--fractions",
        ",".join(map(str, FRACTIONS)),
        "--out",
        str(out),
    )
    assert code == 0, stderr
    return fx, out, stdout, stderr


def _metrics(out, fraction) -> dict:
    return json.loads((out / fraction_name(fraction) / "metrics.json").read_text())


# --------------------------------------------------------------------------- subsets


def test_subsets_are_nested_deterministic_and_whole_at_one():
    patients = np.arange(137) * 7 + 10_000_000
    fractions = (0.001, 0.01, 0.1, 0.5, 1.0)
    subsets = patient_subsets(np.repeat(patients, 3), fractions, seed=4)  # repeats: images
    assert [s.size for s in subsets] == [1, 2, 14, 69, 137]
    for small, large in itertools.pairwise(subsets):
        assert np.array_equal(large[: small.size], small)  # the same permutation's prefix
        assert set(small) <= set(large)
    assert sorted(subsets[-1].tolist()) == patients.tolist()
    again = patient_subsets(np.repeat(patients, 3)[::-1], fractions, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again, strict=True))
    other = patient_subsets(patients, fractions, seed=5)
    assert not np.array_equal(other[3], subsets[3])


def test_subset_size_rounds_before_the_ceiling():
    assert subset_size(0.1, 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert subset_size(0.001, 10) == 1
    assert subset_size(1.0, 7) == 7
    assert subset_size(0.34, 10) == 4


def test_each_fraction_trains_on_its_patients_train_images(probed):
    fx, out, *_ = probed
    manifest = pl.read_parquet(fx.manifest)
    train = manifest.filter(pl.col("split") == "train")
    subsets = patient_subsets(train["subject_id"].to_numpy(), FRACTIONS, seed=0)
    for fraction, patients in zip(FRACTIONS, subsets, strict=True):
        model = _metrics(out, fraction)["model"]
        assert model["training_patients"] == patients.size
        assert model["training_images"] == train.filter(pl.col("subject_id").is_in(patients)).height
        assert model["fraction"] == fraction
    assert _metrics(out, 1.0)["model"]["training_patients"] == len(fx.train_subjects)


def test_a_patient_in_two_splits_is_refused_in_one_line(tmp_path):
    fx = make_probe_data(tmp_path / "data", n_patients={"train": 30, "validate": 12, "test": 12})
    df = pl.read_parquet(fx.manifest)
    moved = df.filter(pl.col("split") == "test")["subject_id"][0]
    first_train = df.filter(pl.col("split") == "train")["study_id"][0]
    df = df.with_columns(
        pl.when(pl.col("study_id") == first_train)
        .then(pl.lit(moved))
        .otherwise(pl.col("subject_id"))
        .alias("subject_id")
    )
    df.write_parquet(fx.manifest)
    code, stdout, stderr = _run(fx.root, "--embeddings", NAME, "--out", str(tmp_path / "o"))
    assert code == 1
    assert stderr.count("\n") == 1 and "1 patients have images in more than one split" in stderr
    assert str(moved) not in stderr + stdout
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- fitting


def test_planted_signal_is_found_and_noise_is_not(probed):
    _, out, *_ = probed
    m = _metrics(out, 1.0)
    for label in PLANTED:
        assert m["labels"][label]["auroc"] > 0.85, label
    noise = [m["labels"][lab]["auroc"] for lab in LABELS if lab not in PLANTED]
    assert abs(np.mean(noise) - 0.5) < 0.06
    assert max(noise) < min(m["labels"][lab]["auroc"] for lab in PLANTED) - 0.2
    # More patients, better probes: the planted labels gain from the smallest fraction.
    small = _metrics(out, FRACTIONS[0])
    assert np.mean([small["labels"][lab]["auroc"] for lab in PLANTED]) < np.mean(
        [m["labels"][lab]["auroc"] for lab in PLANTED]
    )


def test_a_label_with_one_class_in_its_subset_is_left_out_and_said(probed):
    _, out, stdout, _ = probed
    small = _metrics(out, FRACTIONS[0])
    reason = small["model"]["labels_not_fitted"][RARE]
    assert "one class in the training subset" in reason and "0 positive" in reason
    assert RARE not in small["labels"] and RARE in small["macro"]["left_out"]
    assert RARE not in small["model"]["C"]
    assert RARE in _metrics(out, 1.0)["labels"]  # it has positives among all train patients
    assert f"fraction {FRACTIONS[0]}: no probe for {RARE} (one class" in stdout.replace("\n  ", " ")
    summary = json.loads((out / "probe.json").read_text())
    first = summary["fractions"][0]
    assert first["labels"][RARE]["not_fitted"] == reason and first["labels"][RARE]["auroc"] is None
    assert "not fitted" in (out / "probe.html").read_text()


def test_a_common_macro_spans_the_fractions_when_their_macros_differ(probed):
    """The smallest fraction lacks RARE: probe.json, the table and the page give the macro over
    the labels every fraction averages, each point the mean of those labels' AUROCs."""
    _, out, stdout, _ = probed
    summary = json.loads((out / "probe.json").read_text())
    common = summary["common_macro"]
    sets = [set(fr["macro"]["labels"]) for fr in summary["fractions"]]
    assert set(common["labels"]) == set.intersection(*sets) and RARE not in common["labels"]
    for fr in summary["fractions"]:
        m = common["fractions"][fr["dir"]]
        expected = np.mean([fr["labels"][lab]["auroc"] for lab in common["labels"]])
        assert m["auroc"] == pytest.approx(expected)
        lo, hi = m["auroc_ci"]
        assert lo <= m["auroc"] <= hi
    assert f"over the {len(common['labels'])} labels every fraction averages:" in stdout
    assert "grey squares average the labels every fraction has" in (out / "probe.html").read_text()


def test_the_chosen_c_has_the_best_validate_auroc(probed):
    _, out, *_ = probed
    for fraction in FRACTIONS:
        model = _metrics(out, fraction)["model"]
        assert model["C_grid"] == list(DEFAULT_C_GRID)
        for label, c in model["C"].items():
            aurocs = [-1 if a is None else a for a in model["validate_auroc_per_C"][label]]
            assert c == model["C_grid"][int(np.argmax(aurocs))]


def test_training_policy_changes_the_targets_not_the_evaluated_rows(probed):
    fx, out, *_ = probed
    cfg = ProbeConfig(
        embeddings=NAME,
        data_root=fx.root,
        fractions=(1.0,),
        n_bootstrap=0,
        policy=LabelPolicy(uncertain="ones"),
    )
    a, b = _metrics(out, 1.0), probe(cfg).fractions[0].evaluation.metrics
    assert a["model"]["training_label_policy"]["uncertain"] == "ignore"
    assert b["model"]["training_label_policy"]["uncertain"] == "ones"
    for label in PLANTED:  # uncertain rows join training as positives
        assert b["model"]["training_positives"][label] > a["model"]["training_positives"][label]
        assert a["labels"][label]["rows_fingerprint"] == b["labels"][label]["rows_fingerprint"]


def test_the_same_seed_gives_the_same_probe(probed):
    fx, *_ = probed
    cfg = ProbeConfig(embeddings=NAME, data_root=fx.root, fractions=(0.3,), n_bootstrap=0)
    a, b = probe(cfg), probe(cfg)
    assert np.array_equal(a.fractions[0].evaluation.p, b.fractions[0].evaluation.p)
    c = probe(
        ProbeConfig(embeddings=NAME, data_root=fx.root, fractions=(0.3,), n_bootstrap=0, seed=1)
    )
    assert not np.array_equal(a.fractions[0].evaluation.p, c.fractions[0].evaluation.p)


def test_image_level_probes_score_images(probed):
    fx, *_ = probed
    cfg = ProbeConfig(
        embeddings=NAME, data_root=fx.root, fractions=(1.0,), n_bootstrap=0, level="image"
    )
    ev = probe(cfg).fractions[0].evaluation
    assert ev.metrics["level"] == "image" and "dicom_id" in ev.units.columns
    assert ev.units.height == ev.metrics["counts"]["test"]["images"]


def test_unit_means_are_the_study_means_of_aggregate_studies():
    from cxr.stats.metrics import aggregate_studies

    rows = pl.DataFrame({"study_id": [3, 3, 5, 8, 8, 8], "dicom_id": list("abcdef")})
    p = np.random.default_rng(0).random((6, 2))
    codes, n = unit_index(rows, "study")
    got = unit_means(p, codes, n)
    want = aggregate_studies(
        rows.with_columns(pl.Series("x", p[:, 0]), pl.Series("y", p[:, 1])), ["x", "y"]
    )
    assert np.allclose(got, want.select("x", "y").to_numpy())
    codes, n = unit_index(rows, "image")
    assert np.allclose(unit_means(p, codes, n), p)


def test_standardise_uses_the_training_rows_only():
    rng = np.random.default_rng(0)
    train = rng.normal(5, 3, size=(200, 4)).astype(np.float32)
    train[:, 2] = 7.0  # a constant feature keeps scale 1
    other = rng.normal(-4, 1, size=(50, 4)).astype(np.float32)
    t, o = standardise(train, other)
    assert t.dtype == np.float32 and o.dtype == np.float32
    assert np.allclose(t[:, [0, 1, 3]].mean(0), 0, atol=1e-5)
    assert np.allclose(t[:, [0, 1, 3]].std(0), 1, atol=1e-4)
    assert np.allclose(t[:, 2], 0) and np.allclose(o[:, 2], other[:, 2] - 7.0)
    assert np.allclose(o[:, 0], (other[:, 0] - train[:, 0].mean()) / train[:, 0].std(), atol=1e-4)


# --------------------------------------------------------------------------- outputs


def test_each_fraction_is_an_evaluation_directory(probed):
    fx, out, *_ = probed
    for fraction in FRACTIONS:
        d = out / fraction_name(fraction)
        for name in ("metrics.json", "predictions.csv", "predictions_study.csv", "report.html"):
            assert (d / name).is_file(), name
        ev = read_evaluation(d)
        m = ev.metrics
        assert m["split"] == "test" and ev.protocol.split == "test"
        assert (
            m["provenance"]["embeddings_sha256"]
            == hashlib.sha256((fx.store / META).read_bytes()).hexdigest()
        )
        assert "checkpoint" not in m["provenance"]
        assert m["model"]["kind"] == "linear probe" and m["model"]["embeddings"] == NAME
        assert m["model"]["embeddings_spec"] == "toy:planted"
        assert m["counts"]["test"]["images_excluded_unreadable"] == 2
        assert ev.p.shape == (ev.units.height, len(ev.labels))
        page = (d / "report.html").read_text()
        assert "linear probe on toy embeddings" in page and "embed.json SHA-256" in page
        assert "Grad-CAM, which needs a cxr checkpoint" in page  # no gallery to show
    assert (out / "fraction-1.0").is_dir() and (out / "fraction-0.05").is_dir()


def test_compare_accepts_two_fractions_of_the_same_rows(probed, tmp_path):
    fx, out, *_ = probed
    a, b = out / fraction_name(FRACTIONS[0]), out / fraction_name(1.0)
    code = main(
        ["--quiet", "--data-dir", str(fx.root), "compare", str(a), str(b), "--out", str(tmp_path)]
    )
    assert code == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    assert set(PLANTED) <= set(result["labels"])
    assert RARE not in result["labels"] and RARE in result["labels_left_out"]  # no probe in a
    for label in PLANTED:  # the full training set beats 5% of it on the planted labels
        assert result["labels"][label]["delta_auroc"] < 0


def test_probe_json_and_page(probed):
    _, out, *_ = probed
    s = json.loads((out / "probe.json").read_text())
    assert [f["fraction"] for f in s["fractions"]] == list(FRACTIONS)
    assert s["embeddings"]["name"] == NAME and s["embeddings"]["dim"] == 16
    for fr in s["fractions"]:
        m = _metrics(out, fr["fraction"])
        assert fr["macro"]["auroc"] == m["macro"]["auroc"]
        assert fr["macro"]["auroc_ci"] == m["macro"]["auroc_ci"]
        assert fr["patients"] == m["model"]["training_patients"]
        assert fr["images"] == m["model"]["training_images"]
        for label, entry in fr["labels"].items():
            if "not_fitted" not in entry:
                assert entry["C"] == m["model"]["C"][label]
                assert entry["auroc"] == m["labels"][label]["auroc"]
    page = (out / "probe.html").read_text()
    for fraction in FRACTIONS:
        assert f'href="{fraction_name(fraction)}/report.html"' in page
    assert "data:image/png;base64," in page
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp*"))


def test_terminal_output_is_a_short_table_within_80_columns(probed):
    _, _, stdout, stderr = probed
    assert stderr == ""
    lines = stdout.splitlines()
    assert all(len(line) <= 80 for line in lines if not line.startswith("report:")), stdout
    head = next(i for i, line in enumerate(lines) if line.startswith("fraction "))
    rows = lines[head + 1 : head + 1 + len(FRACTIONS)]
    assert [r.split()[0] for r in rows] == [str(f) for f in FRACTIONS]
    flat = stdout.replace("\n  ", " ")  # long lines are wrapped with an indent
    assert "3 images of the manifest have no embedding in toy" in flat
    assert "run `cxr embed` again" in flat


def test_no_subject_id_in_any_output_or_printed_text(probed):
    fx, out, stdout, stderr = probed
    blob = stdout + stderr
    for path in out.rglob("*"):
        if path.is_file():
            blob += path.read_bytes().decode("latin-1")
    assert "subject_id" not in blob
    for subject in fx.subject_ids:
        assert str(subject) not in blob


# --------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fractions", "0"], "--fractions: 0 is not in (0, 1]"),
        (["--fractions", "0.1,1.5"], "--fractions: 1.5 is not in (0, 1]"),
        (["--fractions", "0.5,0.1"], "--fractions: 0.1 is out of order"),
        (["--fractions", "0.1,0.1"], "--fractions: 0.1 is repeated"),
        (["--fractions", "0.1,,1"], "--fractions: expected comma-separated numbers"),
        (["--fractions", "half"], "--fractions: 'half' is not a number"),
        (["--fractions", "nan"], "--fractions: 'nan' is not a finite number"),
        (["--C", "0,1"], "--C: 0 is not positive"),
        (["--C", "1,1"], "--C: a value is repeated"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--bootstrap", "-1"], "--bootstrap must be >= 0"),
        (["--labels", "radiologist", "--split", "validate"], "radiologists labelled test studies"),
        (["--min-cell", "0"], "--min-cell must be at least 1, got 0"),
        (["--subgroups", "sex,height"], "height"),
        (["--subgroups", "sex"], "the manifest has no demographics"),
    ],
)
def test_bad_options_are_one_line_errors(probed, tmp_path, args, message):
    fx, *_ = probed
    code, _, stderr = _run(fx.root, "--embeddings", NAME, "--out", str(tmp_path / "o"), *args)
    assert code == 1
    assert stderr.count("\n") == 1 and stderr.startswith("cxr probe: error: ")
    assert message in stderr
    assert not (tmp_path / "o").exists()


def test_missing_and_incomplete_stores_are_one_line_errors(probed, tmp_path):
    fx, *_ = probed
    code, _, stderr = _run(fx.root, "--embeddings", "nope", "--out", str(tmp_path / "o"))
    assert code == 1 and stderr.count("\n") == 1
    assert "embed-nope: embeddings not found; `cxr embed --model NAME` writes them" in stderr
    import shutil

    store = tmp_path / "embed-half"
    shutil.copytree(fx.store, store)
    meta = json.loads((store / META).read_text())
    (store / META).write_text(json.dumps({**meta, "complete": False}))
    code, _, stderr = _run(fx.root, "--embeddings", str(store), "--out", str(tmp_path / "o"))
    assert code == 1 and stderr.count("\n") == 1 and "embeddings incomplete" in stderr
    assert not (tmp_path / "o").exists()


def test_no_label_to_fit_in_any_fraction_is_one_line(tmp_path):
    fx = make_probe_data(tmp_path / "data", n_patients={"train": 20, "validate": 12, "test": 12})
    df = pl.read_parquet(fx.manifest)
    blank = pl.when(pl.col("split") == "train").then(None)
    df.with_columns(*(blank.otherwise(pl.col(lab)).alias(lab) for lab in LABELS)).write_parquet(
        fx.manifest
    )
    args = ["--embeddings", NAME, "--out", str(tmp_path / "o"), "--missing-policy", "ignore"]
    code, _, stderr = _run(fx.root, *args)
    assert code == 1 and stderr.count("\n") == 1
    assert "no label has both classes among the train images of any fraction" in stderr
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused(probed, tmp_path):
    fx, *_ = probed
    target = tmp_path / "file"
    target.write_text("x")
    code, _, stderr = _run(fx.root, "--embeddings", NAME, "--out", str(target))
    assert code == 1 and "--out is an existing file" in stderr and stderr.count("\n") == 1


def test_defaults_are_cxr_trains_and_the_librarys():
    from cxr.commands import probe as command
    from cxr.mimic.policy import MISSING_CHOICES, UNCERTAIN_CHOICES
    from cxr.training.config import TrainConfig

    train, cfg = TrainConfig(), ProbeConfig(embeddings="x")
    assert cfg.policy == train.policy and cfg.label_source == train.label_source
    shown = (command.TRAIN_UNCERTAIN, command.TRAIN_MISSING, command.TRAIN_LABEL_SOURCE)
    assert shown == (train.policy.uncertain, train.policy.missing, train.label_source)
    assert (command.UNCERTAIN_CHOICES, command.MISSING_CHOICES) == (
        UNCERTAIN_CHOICES,
        MISSING_CHOICES,
    )
    assert parse_fractions(command.FRACTIONS) == DEFAULT_FRACTIONS == cfg.fractions
    assert parse_grid(command.C_GRID) == DEFAULT_C_GRID == cfg.c_grid
    assert cfg.split == "test"


@pytest.mark.slow
def test_probe_does_not_import_torch(probed, tmp_path):
    fx, *_ = probed
    code = (
        "import sys; from cxr.cli import main; "
        f"rc = main(['--quiet', '--data-dir', {str(fx.root)!r}, 'probe', '--embeddings', 'toy', "
        f"'--fractions', '1.0', '--bootstrap', '0', '--out', {str(tmp_path / 'o')!r}]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_compare_accepts_a_probe_beside_a_trained_models_evaluation(tmp_path):
    """The same manifest rows scored by `cxr evaluate` (a checkpoint on the image cache) and by
    `cxr probe` (embeddings whose store failed on the image the cache could not decode): the
    fingerprints match and `cxr compare` pairs them."""
    from _eval_fixtures import make_data
    from cxr.core.privacy import mask_subject
    from cxr.pretrained.embeddings import write_store

    fx = make_data(tmp_path / "data")
    df = pl.read_parquet(fx.manifest)
    # More train patients than the evaluation fixture's two (evaluate never reads train rows).
    rng = np.random.default_rng(3)
    seed_rows = df.filter(pl.col("split") == "train")
    extra, new_subjects = [], []
    for k in range(24):
        subject = 19_876_543 + 7_919 * k  # digits no float figure is likely to hold
        new_subjects.append(subject)
        values = rng.choice([1.0, 0.0, np.nan], size=(seed_rows.height, len(LABELS)))
        extra.append(
            seed_rows.with_columns(
                pl.lit(subject).cast(seed_rows["subject_id"].dtype).alias("subject_id"),
                (pl.col("study_id") + 1_000_000 * (k + 1)).alias("study_id"),
                (pl.col("dicom_id") + f"-x{k}").alias("dicom_id"),
                *(pl.Series(lab, values[:, j], dtype=pl.Float32) for j, lab in enumerate(LABELS)),
            )
        )
    df = pl.concat([df, *extra]).sort("split", "study_id", "dicom_id")
    manifest = tmp_path / "variant" / "manifest.parquet"
    manifest.parent.mkdir()
    df.write_parquet(manifest)
    (manifest.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(fx.raw)}))
    failed = set(pl.read_parquet(fx.cache / "index.parquet").filter(~pl.col("ok"))["dicom_id"])
    assert failed  # the fixture's undecodable test image
    store = write_store(
        tmp_path / "store",
        df.select("dicom_id", pl.col("image_path").map_elements(mask_subject, pl.String)),
        rng.normal(size=(df.height, 8)),
        {"name": "toy8", "spec": "toy:noise"},
        ["not a JPEG" if d in failed else None for d in df["dicom_id"]],
    )
    common = ["--quiet", "--data-dir", str(fx.root)]
    evaluated, probed_dir = tmp_path / "reports" / "model", tmp_path / "reports" / "probe"
    assert main([*common, "evaluate", "--checkpoint", str(fx.checkpoint), "--manifest",
                 str(manifest), "--split", "test", "--out", str(evaluated), "--bootstrap", "50"]) == 0  # fmt: skip
    assert main([*common, "probe", "--embeddings", str(store), "--manifest", str(manifest),
                 "--fractions", "1.0", "--out", str(probed_dir), "--bootstrap", "50"]) == 0  # fmt: skip
    a, b = read_evaluation(evaluated), read_evaluation(probed_dir / "fraction-1.0")
    assert a.metrics["protocol"] == b.metrics["protocol"]
    shared = [lab for lab in b.labels if b.metrics["labels"][lab]["auroc"] is not None]
    assert shared
    for label in shared:
        assert (
            a.metrics["labels"][label]["rows_fingerprint"]
            == (b.metrics["labels"][label]["rows_fingerprint"])
        )
    out = tmp_path / "cmp"
    assert main([*common, "compare", str(evaluated), str(probed_dir / "fraction-1.0"),
                 "--out", str(out), "--bootstrap", "50"]) == 0  # fmt: skip
    result = json.loads((out / "compare.json").read_text())
    assert sorted(result["labels"]) == sorted(
        lab for lab in shared if a.metrics["labels"][lab]["auroc"] is not None
    )
    blob = "".join(p.read_bytes().decode("latin-1") for p in probed_dir.rglob("*") if p.is_file())
    for subject in [*fx.subject_ids, *new_subjects]:
        assert str(subject) not in blob


@pytest.mark.slow
def test_probe_reads_a_store_that_cxr_embed_wrote(tmp_path, make_demo):
    """A demo tree, its manifest, embeddings written by `cxr embed`'s own store code (a stand-in
    source of 16 grid-cell means) and `cxr probe` on them: the real store contract end to end."""
    from _embed_fixtures import GridSource
    from cxr.pretrained.embed import EmbedConfig, build_embeddings

    root = tmp_path / "data"
    make_demo(root / "raw", n_patients=40, image_size=64)
    assert main(["--quiet", "--data-dir", str(root), "manifest"]) == 0
    manifest = root / "processed" / "manifest.parquet"
    cfg = EmbedConfig(model="test:grid", manifest=manifest, interim=root / "interim", device="cpu")
    build_embeddings(cfg, GridSource())
    code, stdout, stderr = _run(
        root,
        *("--embeddings", "grid", "--fractions", "0.5,1.0", "--out", str(tmp_path / "p")),
        *("--subgroups", "sex,age_group", "--min-cell", "3"),
    )
    assert code == 0, stderr
    assert "Synthetic demo data" in stdout  # the demo's banner, as cxr evaluate prints it
    m = _metrics(tmp_path / "p", 1.0)
    # Subgroups from the demo's MIMIC-IV demographics, as cxr evaluate scores them.
    assert m["subgroup_options"]["attributes"] == ["sex", "age_group"]
    assert m["subgroup_options"]["min_cell"] == 3
    assert set(m["subgroups"]["sex"]) == {"Female", "Male"}
    assert "subgroup" in (tmp_path / "p" / "fraction-1.0" / "report.html").read_text().lower()
    assert m["model"]["embeddings"] == "grid" and m["model"]["embedding_dim"] == 16
    assert m["model"]["embeddings_spec"] == "test:grid"
    assert m["provenance"]["synthetic_demo"] is True
    assert m["macro"]["auroc"] is not None
    blob = stdout + "".join(
        p.read_bytes().decode("latin-1") for p in (tmp_path / "p").rglob("*") if p.is_file()
    )
    subjects = pl.read_parquet(manifest)["subject_id"].unique().to_list()
    assert subjects
    for subject in subjects:
        assert str(subject) not in blob


def test_a_point_averaging_fewer_labels_says_so_on_the_plot():
    from cxr.evaluation.probe_report import point_note

    assert point_note({"patients": 7, "macro": {"n_labels": 11}}, 14) == "7 pat., 11 labels"
    assert point_note({"patients": 70, "macro": {"n_labels": 14}}, 14) == "70 pat."


def test_a_rerun_into_the_same_out_leaves_no_stale_fraction(probed, tmp_path):
    fx, out, *_ = probed
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert (again / f"fraction-{FRACTIONS[0]!r}").is_dir()
    code, _, stderr = _run(
        fx.root, "--embeddings", NAME, "--fractions", "1.0", "--bootstrap", "0", "--out", str(again)
    )
    assert code == 0, stderr
    assert sorted(p.name for p in again.glob("fraction-*")) == ["fraction-1.0"]


def test_a_bare_name_is_the_store_even_beside_a_folder_of_that_name(probed, tmp_path, monkeypatch):
    from cxr.pretrained.embeddings import resolve_embeddings

    fx, *_ = probed
    interim = fx.root / "interim"
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()  # e.g. downloaded weights that share the name
    assert resolve_embeddings(NAME, interim) == interim / f"embed-{NAME}"
    assert resolve_embeddings(str(interim / f"embed-{NAME}"), tmp_path) == interim / f"embed-{NAME}"

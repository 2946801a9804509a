"""`cxr predict` on files the tests make: PNG (RGBA, 16-bit), JPEG, DICOM MONOCHROME1, unreadable."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from _eval_fixtures import make_data
from cxr.cli import main
from cxr.mimic.schema import LABELS
from train_fixtures import write_checkpoint
from xray_fixtures import write_dicom


def _xray(h=60, w=50, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = 120 + 80 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 10, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    img[0, 0], img[-1, -1] = 0, 255  # full range, so DICOM min-max scaling is exact
    return img


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    ckpt = write_checkpoint(d / "models" / "best.pt")
    img = _xray()
    files = d / "in"
    (files / "sub").mkdir(parents=True)
    Image.fromarray(img).save(files / "plain.jpg", quality=95)
    rgba = np.dstack([img, img, img, np.full_like(img, 200)])
    Image.fromarray(rgba, mode="RGBA").save(files / "rgba.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(files / "sub" / "deep16.png")
    Image.fromarray(255 - img).save(files / "inverted.png")
    write_dicom(files / "sub" / "mono1.dcm", img.astype(np.uint16) * 16, "MONOCHROME1")
    write_dicom(files / "sub" / "noext", img.astype(np.uint16) * 16, "MONOCHROME2")
    (files / "notes.txt").write_text("not an image")  # ignored when walking a directory
    bad = d / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return d, ckpt, files, bad


def _rows(text: str) -> dict[str, dict[str, float]]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["image", "file", *LABELS]
    return {r["file"].rsplit("/", 1)[-1]: {k: float(r[k]) for k in LABELS} for r in reader}


def test_predict_every_format_from_a_directory(inputs, capsys):
    _, ckpt, files, _ = inputs
    # the containers alone: no equalization of the PNG and DICOM inputs here
    assert main(["predict", "--checkpoint", str(ckpt), str(files), "--equalize", "none"]) == 0
    out = capsys.readouterr()
    rows = _rows(out.out)
    assert set(rows) == {
        "plain.jpg",
        "rgba.png",
        "deep16.png",
        "inverted.png",
        "mono1.dcm",
        "noext",
    }
    for r in rows.values():
        assert all(0.0 <= v <= 1.0 for v in r.values())
    # same pixels, different containers -> the same probabilities
    for name in ("rgba.png", "deep16.png", "noext"):
        np.testing.assert_allclose(
            list(rows[name].values()), list(rows["plain.jpg"].values()), atol=0.03
        )
    # MONOCHROME1 is inverted to MONOCHROME2: it matches the inverted PNG, not the original
    np.testing.assert_allclose(
        list(rows["mono1.dcm"].values()), list(rows["inverted.png"].values()), atol=1e-3
    )


def test_unreadable_file_is_reported_and_exit_1(inputs, capsys):
    _, ckpt, files, bad = inputs
    missing = files / "nope.jpg"
    code = main(
        ["predict", "--checkpoint", str(ckpt), str(files / "plain.jpg"), str(bad), str(missing)]
    )
    assert code == 1
    out = capsys.readouterr()
    assert list(_rows(out.out)) == ["plain.jpg"]
    lines = out.err.strip().splitlines()
    assert len(lines) == 2
    assert "broken.png" in lines[0] and "nope.jpg" in "".join(lines)


def test_json_output_and_cam_overlays(inputs, tmp_path):
    _, ckpt, files, _ = inputs
    out = tmp_path / "o"
    code = main(
        [
            "--quiet",
            "predict",
            "--checkpoint",
            str(ckpt),
            str(files / "sub"),
            "--cam",
            "--top-k",
            "2",
            "--format",
            "json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == 3 and list(rows[0]) == ["image", "file", *LABELS]
    cams = sorted((out / "cam").glob("*.png"))
    assert len(cams) == 6
    im = np.asarray(Image.open(cams[0]))
    assert im.ndim == 3 and im.shape[2] == 3


def test_cam_needs_out(inputs, capsys):
    _, ckpt, files, _ = inputs
    assert main(["predict", "--checkpoint", str(ckpt), str(files), "--cam"]) == 1
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_privacy_no_subject_id_in_any_output(tmp_path, capfd):
    fx = make_data(tmp_path / "data", seed=3)
    report = tmp_path / "reports" / "r"
    assert (
        main(
            [
                "--data-dir",
                str(fx.root),
                "evaluate",
                "--checkpoint",
                str(fx.checkpoint),
                "--out",
                str(report),
                "--bootstrap",
                "20",
            ]
        )
        == 0
    )
    # predict on cache images saved under names without ids
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cache = np.load(fx.cache / "images.npy")
    for k in range(3):
        Image.fromarray(cache[k]).save(imgs / f"img{k}.png")
    pred = tmp_path / "pred"
    assert (
        main(
            ["predict", "--checkpoint", str(fx.checkpoint), str(imgs), "--cam", "--out", str(pred)]
        )
        == 0
    )
    captured = capfd.readouterr()
    texts = [captured.out, captured.err]
    outputs = [p for d in (report, pred) for p in d.rglob("*") if p.is_file()]
    assert len(outputs) > 8
    for p in outputs:
        texts.append(p.read_bytes().decode("latin1"))
    # ids inside base64 images would be encoded; also check the decoded HTML image payloads
    for sid in fx.subject_ids:
        for text in texts:
            assert str(sid) not in text


def test_no_image_files_is_one_line_and_writes_nothing(inputs, tmp_path, capsys):
    _, ckpt, _, _ = inputs
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("x")
    out = tmp_path / "o"
    assert main(["predict", "--checkpoint", str(ckpt), str(empty), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "no image files found" in captured.err
    assert not out.exists()


def test_out_that_is_a_file_is_one_line_and_writes_nothing(inputs, tmp_path, capsys):
    _, ckpt, files, _ = inputs
    taken = tmp_path / "taken"
    taken.write_text("a file the user keeps")
    for out in (taken, taken / "sub"):
        assert main(["predict", "--checkpoint", str(ckpt), str(files), "--out", str(out)]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured.err
        assert "is a file, not a directory" in captured.err and "Traceback" not in captured.err
    assert taken.read_text() == "a file the user keeps"


def test_checkpoint_with_bad_preprocessing_is_one_line_for_predict_and_evaluate(
    inputs, tmp_path, capsys
):
    """A checkpoint whose image size is -5: refused when loaded, before any image is read."""
    import torch

    _, ckpt, files, _ = inputs
    bad = torch.load(ckpt, weights_only=True)
    bad["preprocess"]["image_size"] = -5
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    for argv in (
        ["predict", "--checkpoint", str(path), str(files)],
        ["--data-dir", str(tmp_path), "evaluate", "--checkpoint", str(path)],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "preprocess.image_size=-5: must be an integer >= 8" in err


def test_old_and_new_checkpoint_formats_predict_the_same(inputs, tmp_path, capsys):
    """A checkpoint written before the preprocess block (image_size, normalization, in_chans,
    config.cache_size) predicts exactly as the same weights with the block."""
    import torch

    _, _, files, _ = inputs
    new = write_checkpoint(tmp_path / "new.pt", image_size=24, source_size=40, mean=0.45)
    old = {k: v for k, v in torch.load(new, weights_only=True).items() if k != "preprocess"}
    old["config"] = {"cache_size": 40}
    torch.save(old, tmp_path / "old.pt")
    tables = []
    for path in (new, tmp_path / "old.pt"):
        assert main(["predict", "--checkpoint", str(path), str(files / "plain.jpg")]) == 0
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1]
    # and they differ from a checkpoint that read other squares: the block is what is used
    other = write_checkpoint(tmp_path / "other.pt", image_size=24, source_size=24, mean=0.45)
    assert main(["predict", "--checkpoint", str(other), str(files / "plain.jpg")]) == 0
    assert capsys.readouterr().out != tables[0]


def test_decoder_other_than_the_training_cache_is_warned_about(inputs, tmp_path, capsys):
    _, _, files, _ = inputs
    ckpt = write_checkpoint(tmp_path / "m.pt", method="pillow-draft+some-older-resampler")
    assert main(["predict", "--checkpoint", str(ckpt), str(files / "plain.jpg")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("cxr predict: warning: the model was trained on images decoded with ")
    assert err.count("\n") == 1


def test_device_defaults_to_auto_and_is_checked(inputs, capsys):
    import torch

    from cxr.cli import build_parser
    from cxr.inference.runtime import resolve_device

    args = build_parser().parse_args(["predict", "--checkpoint", "x.pt", "in"])
    assert args.device == "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(resolve_device("cpu")) == torch.device("cpu")  # idempotent
    _, ckpt, files, _ = inputs
    bad = ["quantum"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    for device in bad:
        argv = ["predict", "--checkpoint", str(ckpt), str(files), "--device", device]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"device '{device}'" in err


def _checkpoint_with(path, **keys):
    """The fixture's checkpoint with `keys` set, as a newer `cxr train` records them."""
    import torch

    from cxr.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    ckpt.update(keys)
    target = path.with_name(f"with-{'-'.join(keys)}.pt")
    save_checkpoint(target, ckpt)
    assert torch.load(target, weights_only=True)["labels"] == list(LABELS)
    return target


def test_outputs_are_named_by_the_exact_stem_unique_per_input(inputs, tmp_path):
    """`-` used to become `_`, and a second input with the same stem got only its clashing
    overlay renamed: one image's overlays landed under two names."""
    _, ckpt, _, _ = inputs
    stem = "0a1b2c3d-4e5f6a7b-8c9d0e1f-2a3b4c5d-6e7f8a9b"
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(_xray(seed=seed)).save(tmp_path / folder / f"{stem}.png")
    out = tmp_path / "o"
    argv = [
        "--quiet",
        "predict",
        "--checkpoint",
        str(ckpt),
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    assert main([*argv, "--cam", "--top-k", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["image"] for r in rows] == [stem, f"{stem}~2"]
    assert [r["file"].split("/")[-2] for r in rows] == ["a", "b"]
    names = sorted(p.name for p in (out / "cam").iterdir())
    assert len(names) == 4
    for row in rows:  # each input's overlays carry its own name, and only it
        mine = [n for n in names if n.split("__")[0] == row["image"]]
        assert len(mine) == 2


def test_overlays_cover_only_the_image_at_its_aspect_with_title_and_scale(inputs, tmp_path):
    from cxr.inference.explain import CAM_BAR, CAM_HEADER, CAM_SIDE, cam_region, render_cam

    # a portrait image in a 64 px square: columns 8..55; the map peaks in the padding
    square = np.zeros((64, 64), dtype=np.uint8)
    square[:, 8:56] = 128
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[:, 0:3] = 1.0  # in the padding (left of column 8 once resized)
    heat[10:14, 14:18] = 0.5  # a bump over the image
    box = (0, 8, 64, 48)
    region = cam_region(heat, 64, box)
    assert region.shape == (64, 48) and region.max() == pytest.approx(1.0)
    peak = np.unravel_index(region.argmax(), region.shape)
    assert peak[1] > 16  # the bump, not the padding, sets the scale
    pixels = render_cam(square, heat, box, "Edema: p = 0.873")
    width = round(48 * CAM_SIDE / 64)
    assert pixels.shape == (CAM_HEADER + CAM_SIDE, width + CAM_BAR, 3)  # the image's aspect
    image = pixels[CAM_HEADER:, :width].astype(int)
    gray = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])
    assert gray.mean() > 0.8  # transparent where the map is low
    scale = CAM_SIDE / 64
    assert not gray[round(peak[0] * scale), round(peak[1] * scale)]  # coloured at the bump
    assert (image != 0).all(axis=-1).mean() > 0.99  # no black padding: only the film is drawn
    assert (pixels[:CAM_HEADER, :width] < 128).any()  # the title is written
    bar = pixels[CAM_HEADER + 5 : -5, width + 10 : width + 20].astype(int)
    assert not (bar[0] == bar[-1]).all()  # the colour bar runs from the peak colour to clear

    # from the command line: one PNG per label, the input's aspect kept (a landscape file)
    _, ckpt, _, _ = inputs
    wide = tmp_path / "wide.png"
    Image.fromarray(_xray(h=40, w=60)).save(wide)
    out = tmp_path / "o"
    assert (
        main(
            [
                "--quiet",
                "predict",
                "--checkpoint",
                str(ckpt),
                str(wide),
                "--cam",
                "--top-k",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (png,) = (out / "cam").iterdir()
    drawn = np.asarray(Image.open(png))
    height, width = drawn.shape[0] - CAM_HEADER, drawn.shape[1] - CAM_BAR
    # the aspect of the image in the model's 32 px square: 21 x 32 for 40 x 60
    assert width == CAM_SIDE and abs(height / width - 40 / 60) < 1 / 32


def test_thresholds_validate_writes_decisions_beside_probabilities(inputs, tmp_path, capsys):
    _, ckpt, files, _ = inputs
    argv = [
        "predict",
        "--checkpoint",
        str(ckpt),
        str(files / "plain.jpg"),
        "--thresholds",
        "validate",
    ]
    assert main(argv) == 1  # a checkpoint without them: one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no validate-chosen thresholds" in err
    thresholds = {label: 0.3 + 0.03 * j for j, label in enumerate(LABELS)}
    with_thresholds = _checkpoint_with(ckpt, thresholds={"youden": thresholds})
    argv[2] = str(with_thresholds)
    assert main([*argv, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    columns = ["image", "file"]
    for label in LABELS:
        columns += [label, f"{label} decision"]
        assert row[f"{label} decision"] == ("yes" if row[label] >= thresholds[label] else "no")
    assert list(row) == columns
    decisions = {row[f"{label} decision"] for label in LABELS}
    assert decisions == {"yes", "no"} or len(decisions) == 1


def test_png_and_dicom_inputs_are_equalized_as_mimic_cxr_jpg_was(inputs, tmp_path, capsys):
    """A gamma change of a PNG moved the demo model's probabilities by up to 0.93: MIMIC-CXR-JPG
    was histogram-equalized, the PNG was not."""
    from cxr.imaging.images import equalize_histogram

    img = _xray(h=80, w=64, seed=4)
    gamma = np.clip(255.0 * (img / 255.0) ** 0.5 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(img.astype(int) - gamma.astype(int)).mean() > 30
    a, b = equalize_histogram(img), equalize_histogram(gamma)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3  # the gamma is all but gone
    assert a.min() == 0 and a.max() == 255
    flat = np.full((5, 5), 77, dtype=np.uint8)
    np.testing.assert_array_equal(equalize_histogram(flat), flat)

    _, ckpt, _, _ = inputs
    Image.fromarray(img).save(tmp_path / "film.png")
    Image.fromarray(gamma).save(tmp_path / "film-gamma.png")

    def spread(*extra) -> float:
        argv = ["predict", "--checkpoint", str(ckpt), str(tmp_path / "film.png")]
        assert main([*argv, str(tmp_path / "film-gamma.png"), *extra]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        return max(abs(float(rows[0][k]) - float(rows[1][k])) for k in LABELS)

    assert spread() < spread("--equalize", "none") / 3  # equalized by default


def test_a_dicom_view_the_model_was_not_trained_on_is_warned_about(inputs, tmp_path, capsys):
    _, ckpt, _, _ = inputs
    pa_only = _checkpoint_with(ckpt, views=["PA"])
    img = _xray().astype(np.uint16) * 16
    write_dicom(tmp_path / "ap.dcm", img, "MONOCHROME2", ViewPosition="AP")
    write_dicom(tmp_path / "pa.dcm", img, "MONOCHROME2", ViewPosition="PA")
    argv = [
        "predict",
        "--checkpoint",
        str(pa_only),
        str(tmp_path / "ap.dcm"),
        str(tmp_path / "pa.dcm"),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ap.dcm: DICOM view AP" in err[0] and "trained on PA" in err[0]

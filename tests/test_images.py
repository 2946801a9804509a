"""cxr.imaging.images: one reader for JPEG, PNG and DICOM, and the square fit of the cache."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr.core.errors import CxrError
from cxr.imaging.images import ImageReadError, fit_square, load_fitted, load_xray
from xray_fixtures import write_dicom, write_jpeg, xray_like


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return xray_like(300, 250, seed=1)


# ----------------------------------------------------------------------------- JPEG


def test_jpeg_full_decode(tmp_path, picture):
    img = load_xray(write_jpeg(tmp_path / "a.jpg", picture))
    assert img.dtype == np.uint8 and img.shape == picture.shape
    assert psnr(img, picture) > 35


def test_jpeg_draft_never_below_max_side(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", xray_like(1200, 1000, seed=2))
    for max_side, expected in (
        (100, (150, 125)),
        (150, (150, 125)),
        (151, (300, 250)),
        (2000, None),
    ):
        img = load_xray(path, max_side=max_side)
        assert img.shape == (expected or (1200, 1000))
        assert max(img.shape) >= min(max_side, 1200)


def test_draft_fidelity_against_full_decode_area_resize(tmp_path):
    """The cached pixels vs a full decode box-resized to the same geometry: PSNR >= 35 dB."""
    path = write_jpeg(tmp_path / "x.jpg", xray_like(1528, 1272, seed=3))
    cached = load_fitted(path, 256)
    full = Image.open(path)
    full.load()
    ref = np.zeros((256, 256), np.uint8)
    nh, nw = 256, round(1272 * 256 / 1528)
    left = (256 - nw) // 2
    ref[:, left : left + nw] = np.asarray(full.resize((nw, nh), Image.Resampling.BOX))
    assert psnr(cached, ref) >= 35


def test_rgb_jpeg_becomes_luminance(tmp_path, picture):
    rgb = np.stack([picture] * 3, axis=-1)
    path = tmp_path / "rgb.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    img = load_xray(path, max_side=64)
    assert img.ndim == 2 and img.dtype == np.uint8


@pytest.mark.parametrize("keep", [0.95, 0.5, 0.05])
def test_truncated_jpeg_is_an_error(tmp_path, picture, keep):
    data = (write_jpeg(tmp_path / "ok.jpg", picture)).read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: int(len(data) * keep)])
    for max_side in (None, 64):
        with pytest.raises(ImageReadError, match=r"(?i)truncated"):
            load_xray(bad, max_side=max_side)


def test_corrupt_bytes_are_an_error(tmp_path):
    bad = tmp_path / "junk.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    with pytest.raises(ImageReadError):
        load_xray(bad)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n")
    with pytest.raises(ImageReadError, match="not a JPEG, PNG or DICOM"):
        load_xray(text)


# ----------------------------------------------------------------------------- files that are not there


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty file \(0 bytes\)") as info:
        load_xray(empty)
    assert isinstance(info.value, CxrError)
    assert str(info.value) == f"{empty}: empty file (0 bytes)"
    assert info.value.path == str(empty) and info.value.reason == "empty file (0 bytes)"


def test_directory_and_missing_file(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageReadError, match="is a directory"):
        load_xray(tmp_path / "dir.jpg")
    with pytest.raises(ImageReadError, match="file not found"):
        load_xray(tmp_path / "gone.jpg")


def test_reason_never_contains_the_path(tmp_path):
    deep = tmp_path / "p10" / "p10000032" / "s50000001"
    deep.mkdir(parents=True)
    (deep / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageReadError) as info:
        load_xray(deep / "x.jpg")
    assert "p10000032" not in info.value.reason


# ----------------------------------------------------------------------------- PNG


def test_png_named_jpg_loads_by_content(tmp_path, picture):
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(picture).save(path, format="PNG")
    np.testing.assert_array_equal(load_xray(path, max_side=64), picture)


def test_16bit_png_scaled_to_8bit(tmp_path, picture):
    path = tmp_path / "p16.png"
    Image.fromarray(picture.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(load_xray(path), picture)
    # a 12-bit-ish ramp: proportional, rounded, monotone
    ramp = np.tile(np.arange(0, 65536, 257, dtype=np.uint16)[:256], (4, 1))
    Image.fromarray(ramp).save(path)
    np.testing.assert_array_equal(load_xray(path)[0], np.arange(256))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGB", "P"])
def test_colour_and_alpha_png(tmp_path, picture, mode):
    alpha = np.full_like(picture, 7)  # nearly transparent: alpha must be dropped, not composited
    if mode == "RGBA":
        arr = np.stack([picture, picture, picture, alpha], axis=-1)
        im = Image.fromarray(arr, "RGBA")
    elif mode == "LA":
        im = Image.fromarray(np.stack([picture, alpha], axis=-1), "LA")
    elif mode == "RGB":
        im = Image.fromarray(np.stack([picture] * 3, axis=-1), "RGB")
    else:
        im = Image.fromarray(picture).convert("P")
    path = tmp_path / f"{mode}.png"
    im.save(path)
    img = load_xray(path)
    assert img.shape == picture.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - picture).max() <= (40 if mode == "P" else 1)


def test_png_truncated(tmp_path, picture):
    path = tmp_path / "t.png"
    Image.fromarray(picture).save(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ImageReadError):
        load_xray(path)


# ----------------------------------------------------------------------------- DICOM


def _minmax8(a):
    a = a.astype(np.float64)
    return np.rint((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)


def test_dicom_monochrome2_12bit(tmp_path, picture):
    raw = picture.astype(np.uint16) * 16  # 12-bit
    img = load_xray(write_dicom(tmp_path / "m2.dcm", raw))
    np.testing.assert_array_equal(img, _minmax8(raw))


def test_dicom_monochrome1_with_rescale_is_inverted(tmp_path, picture):
    raw = picture.astype(np.uint16) * 16
    path = write_dicom(
        tmp_path / "m1.jpg",  # the name does not matter: content decides
        raw,
        photometric="MONOCHROME1",
        RescaleSlope="2",
        RescaleIntercept="-100",
    )
    img = load_xray(path)
    expected = 255 - _minmax8(raw * 2.0 - 100)
    assert np.abs(img.astype(int) - expected).max() <= 1
    # air (dark in the picture) is dark again after inversion of the MONOCHROME1 data
    inverted = write_dicom(tmp_path / "m1b.dcm", 4095 - raw, photometric="MONOCHROME1")
    assert np.abs(load_xray(inverted).astype(int) - _minmax8(raw)).max() <= 1


def test_dicom_window_applied(tmp_path):
    raw = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 0..4080
    path = write_dicom(
        tmp_path / "w.dcm",
        raw,
        RescaleSlope="1",
        RescaleIntercept="0",
        WindowCenter="2048",
        WindowWidth="1024",
    )
    img = load_xray(path)[0]
    assert img[raw[0] < 1536].max() == 0 and img[raw[0] > 2560].min() == 255
    inside = img[(raw[0] > 1600) & (raw[0] < 2500)]
    assert np.all(np.diff(inside.astype(int)) >= 0) and 0 < inside.mean() < 255


def test_dicom_monochrome1_rescale_and_window_then_inverted(tmp_path):
    """Modality rescale, then the VOI window on the rescaled values, then MONOCHROME1 inversion:
    values below the window are white, above it black, and the ramp inside runs downwards."""
    raw = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))
    path = write_dicom(
        tmp_path / "m1w.dcm",
        raw,
        photometric="MONOCHROME1",
        RescaleSlope="2",
        RescaleIntercept="-100",
        WindowCenter="3996",  # in rescaled units: the window is [2972, 5020]
        WindowWidth="2048",
    )
    img = load_xray(path)[0].astype(int)
    value = raw[0] * 2.0 - 100
    assert img[value < 2972].min() == 255 and img[value > 5020].max() == 0
    inside = img[(value > 3000) & (value < 5000)]
    assert np.all(np.diff(inside) <= 0) and 0 < inside.mean() < 255
    # a window ignoring the rescale would put the white/black edge elsewhere
    assert abs(int(np.argmin(np.abs(img - 128))) - int(np.argmin(np.abs(value - 3996)))) <= 1


def test_dicom_12bit_ignores_bits_above_bits_stored(tmp_path, picture):
    """BitsStored 12 in 16 allocated: bits 12-15 (overlays, garbage) must not reach the pixels."""
    raw = picture.astype(np.uint16) * 16
    img = load_xray(write_dicom(tmp_path / "hb.dcm", raw | 0xF000, bits_stored=12))
    np.testing.assert_array_equal(img, _minmax8(raw))


def test_dicom_jpeg_baseline_compressed(tmp_path, picture):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "c.dcm", picture.astype(np.uint16), bits_stored=8)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = 8
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    img = load_xray(path)
    assert img.shape == picture.shape
    assert psnr(img, _minmax8(picture)) > 30


def test_dicom_without_pixels(tmp_path, picture):
    import pydicom

    path = write_dicom(tmp_path / "np.dcm", picture.astype(np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        load_xray(path)


# ----------------------------------------------------------------------------- fit_square


@pytest.mark.parametrize(
    ("shape", "box"),
    [
        ((200, 100), (0, 16, 64, 32)),  # portrait: full height, centred horizontally
        ((100, 200), (16, 0, 32, 64)),  # landscape: full width, centred vertically
        ((50, 50), (0, 0, 64, 64)),  # square, enlarged
        ((201, 100), (0, 16, 64, 32)),
    ],
)
def test_fit_square_geometry(shape, box):
    img = np.full(shape, 200, np.uint8)
    out = fit_square(img, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    top, left, h, w = box
    inside = np.zeros((64, 64), bool)
    inside[top : top + h, left : left + w] = True
    assert np.all(out[inside] == 200)
    assert np.all(out[~inside] == 0)


def test_fit_square_area_average():
    checker = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = fit_square(checker, 64)
    assert np.all(np.abs(out.astype(int) - 128) <= 1)  # box filter: exact 2x2 means


def test_read_error_masks_the_patient_folder(tmp_path):
    from cxr.imaging.images import ImageReadError, load_xray

    path = tmp_path / "files" / "p10" / "p10000032" / "s50414267" / "x.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as err:
        load_xray(path)
    assert "10000032" not in str(err.value) and "p********/s50414267/x.jpg" in str(err.value)

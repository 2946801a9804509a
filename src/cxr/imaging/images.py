"""Read chest X-rays (JPEG, PNG, DICOM) into one form: a 2-D uint8 array, MONOCHROME2 (air dark).

Every command that touches pixels (verify --deep, preprocess, predict) reads through `load_xray`,
so a file decodes the same way everywhere. The format is detected from the file's first bytes, not
its name: a PNG named `.jpg` loads as a PNG.

JPEGs are the hot path (MIMIC-CXR-JPG is 3056 x 2544 JPEGs): with `max_side`, libjpeg decodes in
the DCT domain at the smallest scale (1/2, 1/4, 1/8) whose result still covers `max_side`, which
roughly halves the decode cost (benchmarks/bench_decode.py, figures in benchmarks/RESULTS.md).
`fit_square` then box-filters down to the cache geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from cxr.core.errors import CxrError
from cxr.core.privacy import mask_subject

# A truncated file is an error, never a half-grey image in the cache: keep Pillow strict.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# The resampling filter of fit_square. BOX is an exact area average when shrinking, which is what a
# cached image is compared against (benchmarks/bench_decode.py measures the fidelity).
RESAMPLE = Image.Resampling.BOX
RESAMPLE_NAME = "box"
METHOD = f"pillow-draft+{RESAMPLE_NAME}"

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageReadError(CxrError):
    """A file that cannot be read as an X-ray. `.path` and `.reason` (no path inside the reason)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        # Decoders like to quote the full path; the reason travels into the cache index and the
        # summary, where the path (which contains subject_id) must not appear.
        self.reason = mask_subject(reason.replace(self.path, Path(self.path).name))
        super().__init__(f"{mask_subject(self.path)}: {self.reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))


def sniff_format(head: bytes) -> str | None:
    """'jpeg', 'png', 'dicom' or None, from the first 132 bytes of a file."""
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def read_head(path: str | os.PathLike[str]) -> bytes:
    """The first 132 bytes of a file (enough for `sniff_format`, DICOM's preamble included);
    `ImageReadError` naming why a file cannot be opened."""
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or exc}") from None


def load_xray(path: str | os.PathLike[str], max_side: int | None = None) -> np.ndarray:
    """Read an X-ray as a 2-D uint8 array, MONOCHROME2 convention.

    `max_side` is a hint that the caller will shrink the image so its longer side is `max_side`:
    a JPEG is then decoded at the smallest DCT scale whose longer side is still >= `max_side`
    (never smaller). Other formats are returned at full size. Raises `ImageReadError` with a
    reason for a missing, empty, truncated, directory or undecodable file.
    """
    path = Path(path)
    head = read_head(path)
    if not head:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt = sniff_format(head)
    try:
        if fmt == "dicom":
            return _load_dicom(path)
        return _load_pillow(path, fmt, max_side)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large: {exc}") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        what = fmt.upper() if fmt else "image"
        raise ImageReadError(path, f"cannot decode {what}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_pillow(path: Path, fmt: str | None, max_side: int | None) -> np.ndarray:
    try:
        im = Image.open(path)
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not a JPEG, PNG or DICOM file (unrecognized content)") from None
    with im:
        if fmt == "jpeg" and max_side:
            w, h = im.size
            long_side = max(w, h)
            if long_side > max_side:
                # draft() picks the smallest scale whose size is >= the request in both axes; asking
                # for the target geometry keeps the longer side >= max_side.
                want = (-(-w * max_side // long_side), -(-h * max_side // long_side))
                im.draft("L", want)
        im.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES is False)
        return _to_gray_u8(im)


def _to_gray_u8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG): full range 0..65535 onto 0..255, rounded.
        a = np.asarray(im).astype(np.uint32)
        return ((a * 255 + 32767) // 65535).clip(0, 255).astype(np.uint8)
    if mode == "F":
        return _scale_range(np.asarray(im, dtype=np.float64), None)
    if mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.uint8).copy()
    if mode in ("RGBA", "RGBa", "PA"):
        im = im.convert("RGB") if mode != "PA" else im.convert("RGBA").convert("RGB")
    # RGB, CMYK, YCbCr, P, 1 ...: ITU-R 601 luminance (Pillow's L conversion); alpha is dropped.
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def _scale_range(a: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """Linearly map [lo, hi] (default: the array's own min and max) onto 0..255."""
    lo, hi = bounds if bounds is not None else (float(a.min()), float(a.max()))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def _load_dicom(path: Path) -> np.ndarray:
    import pydicom  # only DICOM needs it
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    arr = ds.pixel_array
    if arr.ndim == 3 and photometric.startswith("MONOCHROME"):
        arr = arr[0]  # a multi-frame file: the first frame
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # Colour DICOM (RGB, YBR...): pydicom returns RGB for these; take luminance.
        rgb = arr if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)
        if rgb.dtype != np.uint8:
            rgb = _scale_range(rgb, None)
        return np.asarray(Image.fromarray(rgb[..., :3]).convert("L"), dtype=np.uint8).copy()
    arr = apply_modality_lut(arr, ds)
    bounds = None
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        # The VOI output range is what the window maps onto; probing it with extreme inputs gives
        # the bounds pydicom uses, whatever the combination of windowing/LUT/rescale.
        windowed = apply_voi_lut(arr, ds)
        try:
            probe = np.array([arr.min() - 1e9, arr.max() + 1e9], dtype=np.float64)
            ends = apply_voi_lut(probe, ds)
            bounds = (float(np.min(ends)), float(np.max(ends)))
        except Exception:
            bounds = None
        arr = windowed
    out = _scale_range(np.asarray(arr, dtype=np.float64), bounds)
    if photometric == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: high values are dark; invert to the MONOCHROME2 convention
    if out.ndim != 2:
        raise ImageReadError(path, f"unexpected pixel array shape {out.shape}")
    return out


def equalize_histogram(img: np.ndarray) -> np.ndarray:
    """Global histogram equalization of a uint8 image (OpenCV's equalizeHist formula).

    MIMIC-CXR-JPG's JPEGs were histogram-equalized when they were made from the DICOMs, so a model
    trained on them has only seen equalized intensities; `cxr predict` applies this to other
    inputs. Any increasing change of the input's intensities (a gamma, a window) gives nearly
    the same result. A constant image is returned as it is.
    """
    img = np.asarray(img, dtype=np.uint8)
    hist = np.bincount(img.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    lowest = int(cdf[np.flatnonzero(hist)[0]]) if img.size else 0
    total = int(img.size)
    if total == lowest:
        return img.copy()
    lut = np.rint((cdf - lowest) * 255.0 / (total - lowest)).clip(0, 255).astype(np.uint8)
    return lut[img]


def dicom_view(path: str | os.PathLike[str]) -> str | None:
    """A DICOM file's ViewPosition (PA, AP, LL...), or None when absent or unreadable."""
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    return value or None


def file_format(path: str | os.PathLike[str]) -> str | None:
    """'jpeg', 'png', 'dicom' or None, from the file's first bytes (None too when unreadable)."""
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(132))
    except OSError:
        return None


def fit_geometry(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of an image scaled so its longer side is `size`, aspect ratio kept."""
    if height >= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def fit_square(img: np.ndarray, size: int) -> np.ndarray:
    """Scale a 2-D uint8 image so its longer side is `size` (aspect kept), centred on a zero square.

    Shrinking uses an area (box) filter; the padding is 0 (black, like air in MONOCHROME2).
    """
    if img.ndim != 2:
        raise ValueError(f"fit_square expects a 2-D image, got shape {img.shape}")
    h, w = img.shape
    nh, nw = fit_geometry(h, w, size)
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    if (nh, nw) != (h, w):
        pil = pil.resize((nw, nh), RESAMPLE)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(pil, dtype=np.uint8)
    return out


def load_fitted(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """The cache's pixels for one file: `fit_square(load_xray(path, max_side=size), size)`."""
    return fit_square(load_xray(path, max_side=size), size)

"""Small synthetic X-ray files and manifests for the image and cache tests (no demo generator needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from cxr.mimic.schema import LABELS, image_relpath


def xray_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A CXR-ish uint8 picture: dark air, two bright-ish lung fields, ribs, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y /= h
    x /= w
    body = np.exp(-((((x - 0.5) / 0.38) ** 2 + ((y - 0.55) / 0.5) ** 2) ** 2))
    lungs = sum(np.exp(-(((x - cx) / 0.13) ** 2 + ((y - 0.45) / 0.25) ** 2)) for cx in (0.33, 0.67))
    ribs = 0.5 + 0.5 * np.sin(y * 60 + seed)
    img = 30 + 170 * body - 80 * lungs + 20 * ribs * lungs + rng.normal(0, 6, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG", quality=quality)
    return path


def make_dataset(root: Path, n: int, size: tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """A raw tree of `n` JPEGs and a manifest (+ manifest.json with raw_dir); returns the manifest."""
    raw = root / "raw"
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        subject, study = 10000000 + i // 2, 50000000 + i
        dicom_id = "-".join(f"{rng.integers(0, 2**32):08x}" for _ in range(5))
        rel = image_relpath(subject, study, dicom_id)
        h, w = size if i % 3 else size[::-1]  # portrait and landscape
        write_jpeg(raw / rel, xray_like(h, w, seed=i))
        rows.append(
            {
                "dicom_id": dicom_id,
                "study_id": study,
                "subject_id": subject,
                "split": "train",
                "view_position": "PA",
                "image_path": rel,
                "report_path": None,
                "rows": h,
                "columns": w,
            }
        )
    df = pl.DataFrame(rows, schema_overrides={"report_path": pl.String})
    df = df.with_columns([pl.lit(None, dtype=pl.Float32).alias(label) for label in LABELS])
    df = df.sort("split", "study_id", "dicom_id")
    manifest = root / "processed" / "manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(manifest)
    (manifest.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(raw)}))
    return manifest


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=12, **extra) -> Path:
    """An uncompressed 16-bit-allocated DX DICOM; `extra` sets any further attribute."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path

"""Pixels for `cxr view`: thumbnails from the image cache, full-resolution files, Grad-CAM overlays.

Images are only ever looked up by dicom_id in the manifest's own table of paths, so no part of a
request becomes a path. Heatmaps need torch and the evaluation's checkpoint, both loaded on the
first heatmap asked for; each overlay is computed once and kept under
`<data root>/interim/view-heatmaps/<checkpoint sha256, 16 hex>/<dicom_id>__<label index>.png`:
an overlay shows the patient's image, so it stays under data/ with the other derived images (not
beside the evaluation, whose directory holds shareable results), and the checkpoint's digest in
the folder name keeps overlays of another model apart.
"""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path

import numpy as np

from cxr.core.errors import CxrError
from cxr.core.privacy import mask_subject
from cxr.view.data import EvalInfo, ViewData

THUMB_SIZE = 256


class NotAvailable(CxrError):
    """The image or heatmap cannot be made; the message (no path) is shown to the user (404)."""


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def find_cache(data_root: Path, manifest: Path | None, explicit: Path | None = None):
    """The image cache to take thumbnails from: `explicit`, else the smallest
    `<data root>/interim/cache-*` that holds this manifest's images; None when there is none."""
    from cxr.imaging.cache import holds_manifest, load_cache

    if explicit is not None:
        return load_cache(explicit)
    found = []
    interim = Path(data_root) / "interim"
    for d in interim.glob("cache-*") if interim.is_dir() else []:
        try:
            cache = load_cache(d)
        except CxrError:
            continue
        if manifest is None or holds_manifest(cache, manifest):
            found.append(cache)
    return min(found, key=lambda c: c.size) if found else None


class Pixels:
    """Thumbnails, full-resolution files and heatmaps of the manifest's images."""

    def __init__(self, data: ViewData, cache, heatmap_dir: Path, device: str = "auto") -> None:
        self.data = data
        self.cache = cache
        self.heatmap_dir = Path(heatmap_dir)
        self.device = device
        self._rows: dict[str, int] = {}
        if cache is not None:
            ok = cache.index.filter(cache.index["ok"])
            self._rows = dict(zip(ok["dicom_id"].to_list(), ok["row"].to_list(), strict=True))
        self._models: dict[int, tuple] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- plain images

    def _path(self, dicom_id: str) -> Path:
        rel = self.data.image_paths.get(dicom_id)
        if rel is None:
            raise KeyError(dicom_id)
        return self.data.raw_dir / rel

    def square(self, dicom_id: str, size: int = THUMB_SIZE) -> np.ndarray:
        """The image as a uint8 square: the cache row when cached, else decoded from its file."""
        from cxr.imaging.images import ImageReadError, fit_square, load_fitted

        row = self._rows.get(dicom_id)
        if row is not None:
            image = np.asarray(self.cache.images[row])
            return image if image.shape[0] == size else fit_square(image, size)
        try:
            return load_fitted(self._path(dicom_id), size)
        except ImageReadError as exc:
            raise NotAvailable(f"image {dicom_id}: {exc.reason}") from None

    def thumbnail(self, dicom_id: str) -> bytes:
        return png_bytes(self.square(dicom_id))

    def full(self, dicom_id: str) -> tuple[bytes, str]:
        """(bytes, media type) of the full-resolution image: the file itself for JPEG and PNG,
        else (DICOM) decoded and sent as PNG."""
        from cxr.imaging.images import ImageReadError, load_xray

        path = self._path(dicom_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NotAvailable(f"image {dicom_id}: {exc.strerror or 'unreadable'}") from None
        if data[:3] == b"\xff\xd8\xff":
            return data, "image/jpeg"
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return data, "image/png"
        try:
            return png_bytes(load_xray(path)), "image/png"
        except ImageReadError as exc:
            raise NotAvailable(f"image {dicom_id}: {exc.reason}") from None

    # ----------------------------------------------------------------- heatmaps

    def _model(self, info: EvalInfo):
        """(model, preprocess, device) of an evaluation's checkpoint, loaded once and checked to
        be the file the evaluation scored."""
        with self._lock:
            if info.index in self._models:
                return self._models[info.index]
            if info.checkpoint is None:  # a published model's or a linear probe's evaluation
                raise NotAvailable(
                    f"{info.name}: not scored from a cxr checkpoint (a published model or a "
                    "probe), so no heatmaps"
                )
            if not info.checkpoint.is_file():
                raise NotAvailable(
                    f"{info.name}: its checkpoint ({mask_subject(str(info.checkpoint))}) is not "
                    "found from here, so no heatmaps"
                )
            from cxr.core.hashing import file_sha256
            from cxr.inference.runtime import load_model

            if info.checkpoint_sha256 and file_sha256(info.checkpoint) != info.checkpoint_sha256:
                raise NotAvailable(
                    f"{info.name}: {mask_subject(str(info.checkpoint))} changed since the "
                    "evaluation (SHA-256 differs), so its heatmaps would explain another model"
                )
            model, _, pre = load_model(info.checkpoint, self.device)
            device = next(model.parameters()).device
            self._models[info.index] = (model, pre, device)
            return self._models[info.index]

    def heatmap_path(self, info: EvalInfo, dicom_id: str, label: str) -> Path:
        digest = (info.checkpoint_sha256 or info.name)[:16]
        return self.heatmap_dir / digest / f"{dicom_id}__{info.labels.index(label)}.png"

    def heatmap(self, info: EvalInfo, dicom_id: str, label: str) -> bytes:
        """The Grad-CAM overlay PNG of `label` on the image, from the disk cache or computed."""
        from cxr.core.atomic import write_bytes_atomic

        if dicom_id not in self.data.image_paths:
            raise KeyError(dicom_id)
        path = self.heatmap_path(info, dicom_id, label)
        if path.is_file():
            return path.read_bytes()
        model, pre, device = self._model(info)
        from cxr.inference.explain import grad_cam, overlay

        square = pre.square(self.square(dicom_id, pre.square_size))
        with self._lock:  # one Grad-CAM at a time: autograd on a shared model
            heat = grad_cam(model, pre.tensor(square[None]).to(device), info.labels.index(label))
        data = png_bytes(overlay(square, heat))
        with contextlib.suppress(OSError):  # a read-only data root: serve it uncached
            write_bytes_atomic(path, data)
        return data

"""`cxr predict`: a checkpoint on any X-ray files (JPEG, PNG, DICOM) -> one row of probabilities each.

Files are read with `cxr.imaging.images.load_xray` (JPEG decoded at reduced scale when the model's input is
smaller, 16-bit PNG scaled, RGBA flattened to luminance, DICOM windowed and MONOCHROME1 inverted)
and fit to a square exactly as the image cache stores them, then preprocessed as training's
validation did, from the checkpoint alone (`cxr.inference.runtime.Preprocess`): a file gets the same
probabilities from `cxr predict` as its cached image gets from `cxr evaluate`. Directories are walked
recursively for `.jpg .jpeg .png .dcm .dicom` files and extension-less files that are DICOM by their
magic (`DICM` at byte 128). Unreadable files are reported and skipped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.errors import CxrError
from cxr.core.privacy import mask_subject

EXTENSIONS = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: Path
    inputs: tuple[Path, ...]
    cam: bool = False
    top_k: int = 3
    out: Path | None = None  # directory; None: the table goes to stdout
    format: str = "csv"  # csv | json
    batch_size: int = 16
    device: str = "auto"  # auto: CUDA when available, else the CPU


@dataclass
class PredictResult:
    labels: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"file": str, label: prob, ...}
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    cams: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the user (stderr)


def _is_dicom_by_magic(path: Path) -> bool:
    from cxr.imaging.images import sniff_format

    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return sniff_format(head) == "dicom"


def collect_files(inputs: Sequence[Path]) -> list[Path]:
    """Files to read, in input order. Named files are taken as they are (a missing one is reported
    when read); directories are walked recursively in sorted order for known extensions and
    extension-less DICOM files."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    suffix = path.suffix.lower()
                    if suffix in EXTENSIONS or (suffix == "" and _is_dicom_by_magic(path)):
                        files.append(path)
        else:
            files.append(item)
    return files


def _read(paths: Sequence[Path], pre) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    from cxr.imaging.images import ImageReadError

    for path in paths:
        try:
            square = pre.read(path)  # exactly the cache's pixels for this file
        except ImageReadError as exc:
            yield path, None, exc.reason
            continue
        yield path, square, None


def predict_files(
    model,
    pre,
    labels: Sequence[str],
    files: Sequence[Path],
    batch_size: int = 16,
    device: str = "cpu",
) -> tuple[PredictResult, list[np.ndarray]]:
    """Probabilities for every readable file (in order), failures, and the squares the model saw."""
    from cxr.inference.runtime import predict_squares

    result = PredictResult(labels=list(labels))
    squares: list[np.ndarray] = []
    names: list[str] = []
    for path, square, reason in _read(files, pre):
        # Outputs name a file with its patient folder masked (MIMIC paths contain subject_id).
        if square is None:
            result.failures.append((mask_subject(str(path)), reason or "unreadable"))
        else:
            squares.append(square)
            names.append(mask_subject(str(path)))
    batches = (np.stack(squares[i : i + batch_size]) for i in range(0, len(squares), batch_size))
    k = 0
    for probs in predict_squares(model, pre, batches, device):
        for row in probs:
            result.rows.append(
                {"file": names[k]} | {lab: float(v) for lab, v in zip(labels, row, strict=True)}
            )
            k += 1
    return result, squares


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def write_cams(
    model,
    pre,
    result: PredictResult,
    squares: list[np.ndarray],
    top_k: int,
    out_dir: Path,
    device: str = "cpu",
) -> list[Path]:
    """One overlay PNG per image and top-k label: `<file stem>__<Label>.png` (deduplicated)."""
    from PIL import Image

    from cxr.core.atomic import atomic_path
    from cxr.inference.explain import grad_cams, overlay

    written: list[Path] = []
    used: set[str] = set()
    labels = result.labels
    for row, square in zip(result.rows, squares, strict=True):
        probs = np.array([row[lab] for lab in labels])
        top = [int(i) for i in np.argsort(-probs, kind="stable")[:top_k]]
        maps = grad_cams(model, pre.tensor(square[None]).to(device), top)
        stem = _slug(Path(row["file"]).stem) or "image"
        for j, heat in zip(top, maps, strict=True):
            name = f"{stem}__{_slug(labels[j])}"
            n = 2
            while name in used:
                name = f"{stem}-{n}__{_slug(labels[j])}"
                n += 1
            used.add(name)
            target = out_dir / f"{name}.png"
            with atomic_path(target) as tmp:
                Image.fromarray(overlay(square, heat)).save(tmp, format="PNG")
            written.append(target)
    return written


def format_rows(result: PredictResult, fmt: str) -> str:
    """CSV (header `file,<labels>`) or a JSON list of objects, probabilities to 6 decimals."""
    if fmt == "json":
        rows = [
            {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
            for r in result.rows
        ]
        return json.dumps(rows, indent=2) + "\n"
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", *result.labels])
    for r in result.rows:
        writer.writerow([r["file"], *(f"{r[lab]:.6f}" for lab in result.labels)])
    return buf.getvalue()


def predict(cfg: PredictConfig) -> tuple[PredictResult, str]:
    """Run prediction (and Grad-CAM overlays with `cam`); returns the result and the formatted table.

    With `out`, the table is written to `<out>/predictions.<format>` and overlays to `<out>/cam/`.
    """
    from cxr.core.atomic import write_text_atomic
    from cxr.inference.runtime import load_model, resolve_device

    if cfg.format not in ("csv", "json"):
        raise CxrError(f"--format must be csv or json, got {cfg.format!r}")
    if cfg.cam and cfg.out is None:
        raise CxrError("--cam writes overlay images: give an output directory with --out")
    if cfg.out is not None:
        _check_out_dir(Path(cfg.out))
    files = collect_files(cfg.inputs)
    if not files:  # before loading the model, and before any output is written
        raise CxrError(
            "no image files found in the inputs (directories are searched for "
            + " ".join(EXTENSIONS)
            + " and DICOM files without an extension)"
        )
    device = resolve_device(cfg.device)
    model, ckpt, pre = load_model(cfg.checkpoint, device)
    result, squares = predict_files(model, pre, ckpt["labels"], files, cfg.batch_size, device)
    note = pre.decoder_note()
    if note:
        result.notes.append(note)
    text = format_rows(result, cfg.format)
    if cfg.out is not None:
        out = Path(cfg.out)
        try:
            write_text_atomic(out / f"predictions.{cfg.format}", text)
            if cfg.cam:
                result.cams = write_cams(
                    model, pre, result, squares, cfg.top_k, out / "cam", device
                )
        except OSError as exc:
            where = exc.filename or out
            raise CxrError(f"{where}: cannot write ({exc.strerror or exc})") from None
    return result, text


def _check_out_dir(out: Path) -> None:
    """--out is a directory (made if absent): say so before any work if it cannot be one."""
    for part in (out, *out.parents):
        if part.exists():
            if not part.is_dir():
                what = "is a file" if part == out else f"{part} is a file"
                raise CxrError(f"--out {out}: {what}, not a directory")
            return

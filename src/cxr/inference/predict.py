"""`cxr predict`: a checkpoint on any X-ray files (JPEG, PNG, DICOM) -> one row of probabilities each.

Files are read with `cxr.imaging.images.load_xray` (JPEG decoded at reduced scale when the model's input is
smaller, 16-bit PNG scaled, RGBA flattened to luminance, DICOM windowed and MONOCHROME1 inverted)
and fit to a square exactly as the image cache stores them, then preprocessed as training's
validation did, from the checkpoint alone (`cxr.inference.runtime.Preprocess`): a file gets the same
probabilities from `cxr predict` as its cached image gets from `cxr evaluate`. Directories are walked
recursively for `.jpg .jpeg .png .dcm .dicom` files and extension-less files that are DICOM by their
magic (`DICM` at byte 128). Unreadable files are reported and skipped.

MIMIC-CXR-JPG's JPEGs were histogram-equalized when they were made from the DICOMs, so PNG and
DICOM inputs (which are not) are equalized the same way before fitting (`--equalize`), and a
DICOM whose ViewPosition the model was not trained on is warned about. With `--thresholds
validate`, each probability gets a yes/no decision at the threshold `cxr train` chose on the
validate split. Every output of an input is named by its exact file stem, unique per input
(`unique_stems`): the table's `image` column and the overlays' names.
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


EQUALIZE = ("auto", "all", "none")


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
    thresholds: str | None = None  # "validate": yes/no decisions at the checkpoint's thresholds
    equalize: str = "auto"  # auto: PNG and DICOM inputs; all; none


@dataclass
class PredictResult:
    labels: list[str]
    # {"image": unique stem, "file": masked path, label: prob, ..., "<label> decision": yes/no}
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    cams: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the user (stderr)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # image area per row
    thresholds: dict[str, float] = field(default_factory=dict)  # applied, by label


def decision_column(label: str) -> str:
    return f"{label} decision"


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


def equalizes(fmt: str | None, mode: str) -> bool:
    """Whether an input of format `fmt` is histogram-equalized under `--equalize mode`: `auto`
    equalizes PNG and DICOM files and leaves JPEGs, taken as MIMIC-CXR-JPG's (equalized already)."""
    if mode == "all":
        return True
    if mode == "none":
        return False
    return fmt in ("png", "dicom")


@dataclass(frozen=True)
class _Read:
    path: Path
    square: np.ndarray | None
    box: tuple[int, int, int, int]  # (top, left, height, width) of the image in the square
    view: str | None  # a DICOM's ViewPosition
    reason: str | None  # why it could not be read


def _read(paths: Sequence[Path], pre, equalize: str = "none") -> Iterator[_Read]:
    """Each file as the cache would store it (`load_fitted`), equalized first when `equalizes`
    says so, with the area the image fills in its square."""
    from cxr.imaging.images import (
        ImageReadError,
        dicom_view,
        equalize_histogram,
        file_format,
        fit_geometry,
        fit_square,
        load_xray,
    )

    size = pre.square_size
    for path in paths:
        fmt = file_format(path)
        try:
            image = load_xray(path, max_side=size)
        except ImageReadError as exc:
            yield _Read(path, None, (0, 0, 0, 0), None, exc.reason)
            continue
        if equalizes(fmt, equalize):
            image = equalize_histogram(image)
        h, w = fit_geometry(*image.shape, size)
        box = ((size - h) // 2, (size - w) // 2, h, w)
        view = dicom_view(path) if fmt == "dicom" else None
        yield _Read(path, fit_square(image, size), box, view, None)


def unique_stems(names: Sequence[str]) -> list[str]:
    """Each file's exact stem, made unique: a stem seen before gets `~2`, `~3`... in input
    order, so every output of one input (its row, its overlays) carries one name, and no two
    inputs share one."""
    used: set[str] = set()
    out = []
    for name in names:
        stem = Path(name).stem or Path(name).name or "image"
        candidate, n = stem, 2
        while candidate in used:
            candidate = f"{stem}~{n}"
            n += 1
        used.add(candidate)
        out.append(candidate)
    return out


def checkpoint_thresholds(ckpt: dict, path: Path) -> dict[str, float]:
    """The validate-chosen (Youden) thresholds `cxr train` recorded, one per label."""
    recorded = (ckpt.get("thresholds") or {}).get("youden") or {}
    missing = [label for label in ckpt["labels"] if label not in recorded]
    if missing:
        raise CxrError(
            f"{path}: no validate-chosen thresholds in this checkpoint (written by an older cxr "
            "train); train it again, or leave out --thresholds"
        )
    return {label: float(recorded[label]) for label in ckpt["labels"]}


def predict_files(
    model,
    pre,
    labels: Sequence[str],
    files: Sequence[Path],
    batch_size: int = 16,
    device: str = "cpu",
    equalize: str = "none",
    views: Sequence[str] = (),
) -> tuple[PredictResult, list[np.ndarray]]:
    """Probabilities for every readable file (in order), failures, and the squares the model saw.

    `views`: the view positions the model was trained on; a DICOM of another is warned about."""
    from cxr.inference.runtime import predict_squares

    result = PredictResult(labels=list(labels))
    squares: list[np.ndarray] = []
    names: list[str] = []
    for item in _read(files, pre, equalize):
        # Outputs name a file with its patient folder masked (MIMIC paths contain subject_id).
        shown = mask_subject(str(item.path))
        if item.square is None:
            result.failures.append((shown, item.reason or "unreadable"))
            continue
        squares.append(item.square)
        names.append(shown)
        result.boxes.append(item.box)
        if item.view and views and item.view not in views:
            result.notes.append(
                f"{shown}: DICOM view {item.view}, but the model was trained on "
                f"{', '.join(views)} images only; its probabilities may not hold"
            )
    stems = unique_stems(names)
    batches = (np.stack(squares[i : i + batch_size]) for i in range(0, len(squares), batch_size))
    k = 0
    for probs in predict_squares(model, pre, batches, device):
        for row in probs:
            result.rows.append(
                {"image": stems[k], "file": names[k]}
                | {lab: float(v) for lab, v in zip(labels, row, strict=True)}
            )
            k += 1
    return result, squares


def apply_thresholds(result: PredictResult, thresholds: dict[str, float]) -> None:
    """Add a yes/no decision beside each probability: yes when p >= the label's threshold."""
    result.thresholds = dict(thresholds)
    for row in result.rows:
        for label in result.labels:
            row[decision_column(label)] = "yes" if row[label] >= thresholds[label] else "no"


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
    """One overlay PNG per image and top-k label: `<image>__<Label>.png`, `<image>` the row's
    `image` (the file's exact stem, unique per input)."""
    from PIL import Image

    from cxr.core.atomic import atomic_path
    from cxr.inference.explain import grad_cams, render_cam

    written: list[Path] = []
    labels = result.labels
    for row, square, box in zip(result.rows, squares, result.boxes, strict=True):
        probs = np.array([row[lab] for lab in labels])
        top = [int(i) for i in np.argsort(-probs, kind="stable")[:top_k]]
        maps = grad_cams(model, pre.tensor(square[None]).to(device), top)
        for j, heat in zip(top, maps, strict=True):
            label = labels[j]
            title = f"{label}: p = {row[label]:.3f}"
            if label in result.thresholds:
                t = result.thresholds[label]
                title += f" ({row[decision_column(label)]} at threshold {t:.3f})"
            target = out_dir / f"{row['image']}__{_slug(label)}.png"
            with atomic_path(target) as tmp:
                Image.fromarray(render_cam(square, heat, box, title)).save(tmp, format="PNG")
            written.append(target)
    return written


def format_rows(result: PredictResult, fmt: str) -> str:
    """CSV (header `image,file,<labels>`, each label followed by its decision with thresholds)
    or a JSON list of objects; probabilities to 6 decimals."""
    columns = ["image", "file"]
    for label in result.labels:
        columns.append(label)
        if result.thresholds:
            columns.append(decision_column(label))
    if fmt == "json":
        rows = [
            {k: (round(r[k], 6) if isinstance(r[k], float) else r[k]) for k in columns}
            for r in result.rows
        ]
        return json.dumps(rows, indent=2) + "\n"
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in result.rows:
        writer.writerow([f"{r[c]:.6f}" if isinstance(r[c], float) else r[c] for c in columns])
    return buf.getvalue()


def predict(cfg: PredictConfig) -> tuple[PredictResult, str]:
    """Run prediction (and Grad-CAM overlays with `cam`); returns the result and the formatted table.

    With `out`, the table is written to `<out>/predictions.<format>` and overlays to `<out>/cam/`.
    """
    from cxr.core.atomic import write_text_atomic
    from cxr.inference.runtime import load_model, resolve_device

    if cfg.format not in ("csv", "json"):
        raise CxrError(f"--format must be csv or json, got {cfg.format!r}")
    if cfg.equalize not in EQUALIZE:
        raise CxrError(f"--equalize must be one of {', '.join(EQUALIZE)}, got {cfg.equalize!r}")
    if cfg.thresholds not in (None, "validate"):
        raise CxrError(f"--thresholds must be validate, got {cfg.thresholds!r}")
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
    thresholds = checkpoint_thresholds(ckpt, cfg.checkpoint) if cfg.thresholds else None
    result, squares = predict_files(
        model,
        pre,
        ckpt["labels"],
        files,
        cfg.batch_size,
        device,
        equalize=cfg.equalize,
        views=[str(v) for v in ckpt.get("views") or ()],
    )
    if thresholds is not None:
        apply_thresholds(result, thresholds)
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

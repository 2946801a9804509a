"""Batches of model inputs for a `ModelSource`, from image files or from the image cache.

Image files are decoded by a small thread pool (Pillow, skimage and the transformers processor
release the GIL for most of their work) one batch ahead of the model, so decoding and the forward
pass overlap. An unreadable file does not stop the run: its position comes back with the reason
and no input, and the caller records it as the image cache records its failures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Batch:
    positions: list[int]  # positions in the caller's list, in order
    inputs: object | None  # tensor (n_ok, C, H, W) of the readable ones, None if none was
    ok: list[bool]  # per position: decoded
    errors: list[str | None]  # per position: the reason it could not be read


def _load_one(source, path: Path):
    from cxr.imaging.images import ImageReadError

    try:
        return source.load(path), None
    except ImageReadError as exc:
        return None, exc.reason
    except FileNotFoundError:
        return None, "file not found"


def _assemble(positions: list[int], loaded: list) -> Batch:
    import torch

    tensors = [t for t, _ in loaded if t is not None]
    return Batch(
        positions=positions,
        inputs=torch.stack(tensors) if tensors else None,
        ok=[t is not None for t, _ in loaded],
        errors=[e for _, e in loaded],
    )


def file_batches(
    source, paths: Sequence[Path], batch_size: int, workers: int = 2
) -> Iterator[Batch]:
    """Batches over `paths` in order, decoded by `workers` threads, one batch ahead."""
    starts = range(0, len(paths), batch_size)
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(start: int) -> tuple[list[int], list[Future]]:
            block = list(range(start, min(start + batch_size, len(paths))))
            return block, [pool.submit(_load_one, source, paths[i]) for i in block]

        pending = submit(starts[0])
        for k in range(len(starts)):
            ahead = submit(starts[k + 1]) if k + 1 < len(starts) else None
            block, futures = pending
            yield _assemble(block, [f.result() for f in futures])
            pending = ahead


def square_batches(
    source, squares: np.ndarray, rows: np.ndarray, batch_size: int
) -> Iterator[Batch]:
    """Batches of cache squares `squares[rows]` (every row decoded), in order."""
    for start in range(0, len(rows), batch_size):
        block = rows[start : start + batch_size]
        positions = list(range(start, start + len(block)))
        yield Batch(
            positions=positions,
            inputs=source.from_squares(np.asarray(squares[block])),
            ok=[True] * len(block),
            errors=[None] * len(block),
        )

"""One interface for every model cxr scores or embeds with but did not train itself.

A `ModelSource` is opened from a spec (`cxr.pretrained.registry.open_source`):

    xrv:<weights>     a torchxrayvision classifier, e.g. xrv:densenet121-res224-mimic_ch
    rad-dino          Microsoft's RAD-DINO image encoder (Hugging Face transformers)
    cxr:<checkpoint>  a cxr checkpoint: its penultimate features, and its own 14 outputs

Each source reads an image file exactly as its authors preprocess it (`load`) and turns a batch of
such inputs into embeddings (`embed`) and, when it is a classifier, into probabilities for the
CheXpert labels it has (`classify`). Labels are matched by name; CheXpert labels the model lacks
are listed in `missing_labels` and left out of everything it is scored on.

Sources whose input is a cxr image cache square (`reads == "cache"`) also take those squares
(`from_squares`), which is how `cxr embed` and `cxr evaluate` avoid decoding JPEGs twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ModelSource:
    spec: str  # as the user wrote it ("xrv:densenet121-res224-mimic_ch", "rad-dino", "cxr:run/best.pt")
    name: str  # safe as a directory name: data/interim/embed-<name>/
    reads: str  # "jpeg": an image file through `load`; "cache": cxr image cache squares too
    dim: int  # embedding size
    labels: tuple[str, ...] = ()  # CheXpert labels `classify` returns, in column order
    missing_labels: tuple[str, ...] = ()  # CheXpert labels the model has no output for
    square_size: int = 0  # reads == "cache": the cache size it reads
    # What the outputs depend on, written beside them: spec, weights file and SHA-256, library
    # versions, the preprocessing in words. No patient identifier, no credential.
    provenance: dict[str, Any] = field(default_factory=dict)

    def load(self, path: str | Path):
        """One image file -> the model's input tensor (C, H, W), float32, on the CPU.

        Raises `cxr.imaging.images.ImageReadError` for a file that cannot be read.
        """
        raise NotImplementedError

    def from_squares(self, squares: np.ndarray):
        """uint8 cache squares (N, S, S) -> input tensor (N, C, H, W); reads == "cache" only."""
        raise NotImplementedError(f"{self.spec} reads image files, not cache squares")

    def embed(self, x) -> np.ndarray:
        """Input batch (N, C, H, W) -> embeddings (N, dim) float32."""
        raise NotImplementedError

    def classify(self, x) -> np.ndarray:
        """Input batch (N, C, H, W) -> probabilities (N, len(labels)) float32."""
        raise NotImplementedError(f"{self.spec} is an image encoder: it has no label outputs")

    def to(self, device) -> ModelSource:
        """Move the model to a torch device; returns self."""
        raise NotImplementedError

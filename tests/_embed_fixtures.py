"""A stand-in ModelSource for the `cxr embed` tests: deterministic features of the pixels, no
weights, so the store's mechanics (batches, failures, resume, carry-over) are tested alone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from cxr.pretrained.source import ModelSource

SQUARE = 32


class GridSource(ModelSource):
    """Means of the 4 x 4 grid cells of the image fitted to a square: 16 dimensions.

    `kill_after`: SIGKILL this process when that many batches have been embedded (a real kill:
    no finally block, no flush beyond what the store's own code did).
    """

    def __init__(self, reads: str = "jpeg", kill_after: int = 0, name: str = "grid") -> None:
        super().__init__(
            spec=f"test:{name}",
            name=name,
            reads=reads,
            dim=16,
            square_size=SQUARE,
            provenance={"spec": f"test:{name}", "weights_sha256": "0" * 64},
        )
        self.kill_after = kill_after
        self.batches = 0
        self.loaded_files = 0

    def load(self, path: str | Path):
        import torch

        from cxr.imaging.images import load_fitted

        self.loaded_files += 1
        return torch.from_numpy(load_fitted(path, SQUARE).astype(np.float32) / 255.0)[None]

    def from_squares(self, squares: np.ndarray):
        import torch

        return torch.from_numpy(np.asarray(squares, dtype=np.float32) / 255.0)[:, None]

    def embed(self, x) -> np.ndarray:
        import torch

        self.batches += 1
        if self.kill_after and self.batches > self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        cells = torch.nn.functional.adaptive_avg_pool2d(x, 4)
        return cells.flatten(1).numpy().astype(np.float32)

    def to(self, device):
        return self


class GridClassifier(GridSource):
    """A classifier with outputs for three CheXpert labels only (a published model's subset):
    each probability is a sigmoid of one grid cell's mean, so it depends on the image."""

    LABELS = ("Atelectasis", "Pleural Effusion", "Edema")

    def __init__(self, name: str = "gridcls") -> None:
        from cxr.mimic.schema import LABELS

        super().__init__(name=name)
        self.labels = self.LABELS
        self.missing_labels = tuple(lab for lab in LABELS if lab not in self.LABELS)
        self.provenance = {"spec": self.spec, "weights": "stand-in", "weights_sha256": "1" * 64}

    def classify(self, x) -> np.ndarray:
        feats = self.embed(x)
        z = (feats[:, [0, 5, 10]] - 0.3) * 8
        return (1 / (1 + np.exp(-z))).astype(np.float32)

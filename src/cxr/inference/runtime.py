"""Inference shared by `evaluate` and `predict`: the model and its preprocessing, from a checkpoint alone.

Preprocessing is exactly what training's validation did, so inference cannot drift from it:
training reads squares from an image cache of `source_size` (the config's `cache_size`, else
`image_size`) built by `cxr.imaging.images.load_fitted` (load_xray -> fit_square, aspect kept, zero-padded),
and `cxr.training.augment.eval_transform` resizes them to `image_size` (bilinear, antialiased, in float) and
normalizes. A file is therefore read as `load_fitted(path, source_size)`, exactly as the cache
stores it, and then goes through the same `eval_transform`. (Fitting straight to `image_size`
would feed the model a box-filtered, uint8-rounded, half-a-pixel-shifted image it never saw: on the
demo model that moved probabilities by up to 0.6.) Nothing here reads a config file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    image_size: int  # the model's input
    mean: float
    std: float
    in_chans: int = 1
    source_size: int = 0  # the squares training read (its cache's size); 0: image_size
    method: str = ""  # the decoder that made those squares (cache.json); "": not recorded

    @property
    def square_size(self) -> int:
        return self.source_size or self.image_size

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> Preprocess:
        """From the checkpoint's `preprocess` block (or the fields older checkpoints carry),
        every value checked: a bad one is a one-line CxrError naming it."""
        from cxr.training.checkpoint import checkpoint_preprocess

        block = checkpoint_preprocess(ckpt)
        return cls(
            image_size=block["image_size"],
            mean=block["mean"],
            std=block["std"],
            in_chans=block["in_chans"],
            source_size=block["source_size"],
            method=block["method"],
        )

    def decoder_note(self) -> str | None:
        """A warning when this cxr decodes files otherwise than the cache training read."""
        from cxr.imaging.images import METHOD

        if not self.method or self.method == METHOD:
            return None
        return (
            f"the model was trained on images decoded with {self.method}; this cxr decodes "
            f"with {METHOD}, so probabilities may differ slightly from evaluation on that cache"
        )

    def read(self, path: str | Path) -> np.ndarray:
        """A file as the cache would store it: uint8 (S, S) at `square_size` (ImageReadError)."""
        from cxr.imaging.images import load_fitted

        return load_fitted(path, self.square_size)

    def square(self, image: np.ndarray) -> np.ndarray:
        """uint8 (S, S) at `square_size`; a no-op when already that size and square (a cache row)."""
        size = self.square_size
        if image.shape == (size, size):
            return image
        from cxr.imaging.images import fit_square

        return fit_square(image, size)

    def tensor(self, squares: np.ndarray):
        """uint8 squares (N, S, S) -> the model's input (N, in_chans, image_size, image_size).

        `cxr.training.augment.eval_transform`, the very function training validated with.
        """
        import torch

        from cxr.training.augment import eval_transform

        x = torch.from_numpy(np.array(squares, dtype=np.uint8))  # a copy: memmaps are read-only
        x = eval_transform(x.unsqueeze(1), self.image_size, self.mean, self.std)
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1).contiguous()
        return x


def resolve_device(name="auto"):
    """The torch.device a `--device` value means: `auto` is CUDA when available, else the CPU
    (`cxr.training.device.resolve_device`, which `cxr train` uses too)."""
    from cxr.training.device import resolve_device as resolve

    return resolve(name)


def load_model(path: str | Path, device="cpu"):
    """(model in eval mode on `device`, checkpoint dict, Preprocess) for a checkpoint file."""
    import torch

    from cxr.training.checkpoint import load_checkpoint, model_from_checkpoint

    device = resolve_device(device)
    ckpt = load_checkpoint(path)
    # channels_last: about 25% faster convolutions on the CPU (oneDNN), same results.
    model = model_from_checkpoint(ckpt).to(device, memory_format=torch.channels_last).eval()
    return model, ckpt, Preprocess.from_checkpoint(ckpt)


def predict_squares(
    model, pre: Preprocess, batches: Iterable[np.ndarray], device="cpu"
) -> Iterator[np.ndarray]:
    """Sigmoid probabilities (n, L) float32 for each batch of uint8 squares (n, S, S)."""
    import torch

    device = resolve_device(device)
    with torch.inference_mode():
        for squares in batches:
            logits = model(pre.tensor(squares).to(device))
            yield torch.sigmoid(logits.float()).cpu().numpy()

"""`cxr:<checkpoint>`: a model cxr trained, as a source: its own outputs and its penultimate
features.

Everything comes from `cxr.inference.runtime` (the checkpoint alone decides the preprocessing),
so the input is exactly what `cxr evaluate` feeds the model: cache squares of
`Preprocess.square_size` (`from_squares`), or a file read as the cache would store it and then
the same `eval_transform` (`load`). The embedding is the input of the classifier:
`model.forward_head(model.forward_features(x), pre_logits=True)`, timm's split (SmallCNN has the
same), so the classifier applied to an embedding gives the model's logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.core.errors import CxrError
from cxr.mimic.schema import LABELS
from cxr.pretrained.source import ModelSource


class CxrCheckpointSource(ModelSource):
    def __init__(self, *, model, pre, device, **fields) -> None:
        super().__init__(**fields)
        import torch

        self.model = model
        self.pre = pre  # cxr.inference.runtime.Preprocess
        self.device = torch.device("cpu")
        self.to(device)

    def load(self, path: str | Path):
        return self.pre.tensor(self.pre.read(path)[None])[0]

    def from_squares(self, squares: np.ndarray):
        return self.pre.tensor(squares)

    def _input(self, x):
        import torch

        return torch.as_tensor(x).to(self.device, memory_format=torch.channels_last)

    def embed(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            feats = self.model.forward_features(self._input(x))
            out = self.model.forward_head(feats, pre_logits=True)
        return out.float().cpu().numpy()

    def classify(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(self._input(x))
        return torch.sigmoid(logits.float()).cpu().numpy()

    def to(self, device) -> CxrCheckpointSource:
        import torch

        from cxr.pretrained.common import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device, memory_format=torch.channels_last).eval()
        return self


def _classifier(model):
    return model.get_classifier() if hasattr(model, "get_classifier") else model.classifier


def open_checkpoint(spec: str, checkpoint: str, device="cpu") -> CxrCheckpointSource:
    import torch

    from cxr import __version__
    from cxr.core.errors import MissingInput
    from cxr.inference.runtime import load_model
    from cxr.pretrained.common import dir_name, weights_sha256

    if not checkpoint:
        raise CxrError("cxr:<checkpoint>: give the checkpoint's path, e.g. cxr:models/run/best.pt")
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if (path / "best.pt").is_file():
            path = path / "best.pt"
        else:
            raise MissingInput(path / "best.pt", "checkpoint", "`cxr train --out RUN` writes it")
    model, ckpt, pre = load_model(path, "cpu")
    for name in ("forward_features", "forward_head"):
        if not hasattr(model, name):
            raise CxrError(f"{path}: a {ckpt['arch']} has no {name}; cxr cannot embed with it")
    head = _classifier(model)
    dim = getattr(head, "in_features", None)
    if dim is None:  # not a plain linear head: measure the features once
        with torch.inference_mode():
            x = torch.zeros(1, pre.in_chans, pre.image_size, pre.image_size)
            dim = model.forward_head(model.forward_features(x), pre_logits=True).shape[1]
    labels = tuple(ckpt["labels"])
    run = path.resolve().parent.name
    provenance = {
        "spec": spec,
        "source": "cxr",
        "weights_file": str(path),
        "weights_sha256": weights_sha256(path),
        "arch": ckpt["arch"],
        "epoch": ckpt.get("epoch"),
        "trained_with_cxr": ckpt.get("cxr_version"),
        "cxr": __version__,
        "torch": torch.__version__,
        "preprocessing": (
            f"cxr's evaluation input: a {pre.square_size} px cache square (load_fitted: aspect "
            f"kept, zero-padded), eval_transform to {pre.image_size} px (bilinear, antialiased), "
            f"normalized with mean {pre.mean} and std {pre.std}, {pre.in_chans} channel(s)"
        ),
        "embedding": f"forward_head(forward_features(x), pre_logits=True), {int(dim)}-d",
    }
    return CxrCheckpointSource(
        spec=spec,
        name=dir_name(f"cxr-{run}"),
        reads="cache",
        dim=int(dim),
        labels=labels,
        missing_labels=tuple(label for label in LABELS if label not in labels),
        square_size=pre.square_size,
        provenance=provenance,
        model=model,
        pre=pre,
        device=device,
    )

"""Checkpoints: plain dicts of tensors and Python values, loadable with weights_only=True.

Keys (the contract other stages rely on): `model` (state dict), `arch`, `labels` (output order),
`image_size`, `normalization` ({"mean", "std"} on [0, 1] pixels), `in_chans`, `label_policy`,
`config`, `epoch`, `val_metrics`, `cxr_version`; `last.pt` adds the resume state (`optimizer`,
`scheduler`, `rng`, `best_score`, `bad_epochs`). Nothing in a checkpoint identifies a patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cxr import __version__
from cxr.core.atomic import atomic_path
from cxr.core.errors import CxrError

REQUIRED_KEYS = ("model", "arch", "labels", "image_size", "normalization", "in_chans")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def make_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    labels: Sequence[str],
    image_size: int,
    mean: float,
    std: float,
    in_chans: int,
    label_policy: dict,
    config: dict,
    epoch: int,
    val_metrics: dict,
) -> dict:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "model": state,
        "arch": arch,
        "labels": list(labels),
        "image_size": int(image_size),
        "normalization": {"mean": float(mean), "std": float(std)},
        "in_chans": int(in_chans),
        "label_policy": label_policy,
        "config": config,
        "epoch": int(epoch),
        "val_metrics": val_metrics,
        "cxr_version": __version__,
    }


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Write atomically: a crash mid-write never leaves a broken file under the final name."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CxrError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CxrError(f"{path}: not a loadable cxr checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CxrError(f"{path}: not a cxr checkpoint (missing keys of {', '.join(REQUIRED_KEYS)})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model of a checkpoint, weights loaded, in eval mode."""
    from cxr.training.models import create_model

    model = create_model(ckpt["arch"], num_labels=len(ckpt["labels"]), in_chans=ckpt["in_chans"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CxrError(
            f"checkpoint weights do not fit {ckpt['arch']}: {str(exc).splitlines()[0]}"
        ) from None
    return model.eval()


def check_compatible(ckpt: dict, *, arch: str, labels: Sequence[str], path: str | Path) -> None:
    """Resume only into the same architecture and label set."""
    if ckpt["arch"] != arch:
        raise CxrError(f"{path}: checkpoint is a {ckpt['arch']}, the config asks for {arch}")
    if list(ckpt["labels"]) != list(labels):
        raise CxrError(
            f"{path}: checkpoint was trained on another label set "
            f"({len(ckpt['labels'])} labels: {', '.join(ckpt['labels'][:3])}...) than the config's "
            f"({len(labels)} labels)"
        )

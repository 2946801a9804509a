"""Checkpoints: plain dicts of tensors and Python values, loadable with weights_only=True.

Keys (the contract other stages rely on): `model` (state dict), `arch`, `labels` (output order),
`preprocess` (below), `label_policy`, `config`, `epoch`, `val_metrics`, `thresholds` (`youden`:
each label's threshold chosen on the validate split at that epoch, as `cxr evaluate` chooses its
youden point; `cxr predict --thresholds validate` applies them), `views` (the view positions
trained on), `cxr_version`; `last.pt`
adds the resume state (`optimizer`, `scheduler`, `rng`, `best_score`, `best_epoch`, `bad_epochs`)
and `history` (the metrics.jsonl lines up to its epoch). Nothing in a checkpoint identifies a
patient.

`preprocess` is the one record of what the model was trained on, and the only one inference reads
(`cxr.inference.runtime.Preprocess.from_checkpoint`):

    image_size   the model's input side (eval_transform resizes the squares to it)
    source_size  the side of the cached squares training read (the cache's size)
    mean, std    normalization on [0, 1] pixels
    in_chans     input channels
    method       the decoder that made those squares (the cache's cache.json `method`)

Checkpoints written before the block existed carry `image_size`, `normalization`, `in_chans` and
`config.cache_size` instead; `checkpoint_preprocess` reads those the same way. New checkpoints
still carry those three top-level keys, derived from the block, for readers of the older format.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from cxr import __version__
from cxr.core.atomic import atomic_path
from cxr.core.errors import CxrError, MissingInput

PREPROCESS_KEYS = ("image_size", "source_size", "mean", "std", "in_chans", "method")
RESUME_KEYS = ("optimizer", "scheduler", "rng", "best_score", "best_epoch", "bad_epochs", "history")
_LEGACY_PREPROCESS = ("image_size", "normalization", "in_chans")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _bad(where: str, key: str, value, what: str) -> CxrError:
    return CxrError(f"{where}preprocess.{key}={value!r}: must be {what}")


def check_preprocess(block: Mapping, where: str = "") -> dict:
    """The preprocess block with every value checked (one-line CxrError naming the key)."""
    missing = [k for k in PREPROCESS_KEYS if k not in block]
    if missing:
        raise CxrError(f"{where}preprocess block lacks {', '.join(missing)}")
    out: dict = {}
    for key in ("image_size", "source_size"):
        v = block[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 8:
            raise _bad(where, key, v, "an integer >= 8")
        out[key] = int(v)
    for key, ok, what in (
        ("mean", lambda v: 0.0 <= v <= 1.0, "a finite number in [0, 1]"),
        ("std", lambda v: v > 0.0, "a finite number > 0"),
    ):
        v = block[key]
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or not ok(v)
        ):
            raise _bad(where, key, v, what)
        out[key] = float(v)
    v = block["in_chans"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _bad(where, "in_chans", v, "an integer >= 1")
    out["in_chans"] = int(v)
    if not isinstance(block["method"], str):
        raise _bad(where, "method", block["method"], "a string")
    out["method"] = block["method"]
    return out


def checkpoint_preprocess(ckpt: Mapping, path: str | Path | None = None) -> dict:
    """The checked preprocess block of a checkpoint, from its own block or its older fields."""
    where = f"{path}: " if path is not None else ""
    if "preprocess" in ckpt:
        block = ckpt["preprocess"]
        if not isinstance(block, Mapping):
            raise CxrError(f"{where}checkpoint's preprocess is not a table")
        return check_preprocess(block, where)
    # Written before the block existed: the same values, from where train used to put them.
    norm = ckpt.get("normalization")
    if not isinstance(norm, Mapping):
        raise CxrError(f"{where}checkpoint's normalization is not a table")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else {}
    image_size = ckpt.get("image_size")
    return check_preprocess(
        {
            "image_size": image_size,
            # train reads cache-<cache_size> (0 or absent: image_size) and resizes on the fly
            "source_size": config.get("cache_size") or image_size,
            "mean": norm.get("mean"),
            "std": norm.get("std"),
            "in_chans": ckpt.get("in_chans"),
            "method": "",  # not recorded then
        },
        where,
    )


def make_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    labels: Sequence[str],
    preprocess: Mapping,
    label_policy: dict,
    config: dict,
    epoch: int,
    val_metrics: dict,
    thresholds: dict | None = None,
    views: Sequence[str] = (),
) -> dict:
    pre = check_preprocess(preprocess)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "model": state,
        "arch": arch,
        "labels": list(labels),
        "preprocess": pre,
        # Derived from `preprocess` for readers of the older format; cxr reads the block alone.
        "image_size": pre["image_size"],
        "normalization": {"mean": pre["mean"], "std": pre["std"]},
        "in_chans": pre["in_chans"],
        "label_policy": label_policy,
        "config": config,
        "epoch": int(epoch),
        "val_metrics": val_metrics,
        "thresholds": thresholds or {},
        "views": list(views),
        "cxr_version": __version__,
    }


def without_resume_state(ckpt: Mapping) -> dict:
    """A last.pt's content as best.pt holds it: the model and its contract, no resume state."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_KEYS}


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Write atomically: a crash mid-write never leaves a broken file under the final name."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def _unpickler_detail(message: str) -> str:
    """The reason torch's weights-only unpickler gives, without the advice around it."""
    tail = message.split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[0] if lines else "unreadable"


def load_plain(path: str | Path, what: str = "checkpoint"):
    """torch.load with weights_only=True (tensors and plain values only), one-line errors.

    A file that needs other Python objects is refused as such: unpickling them can run arbitrary
    code, so cxr never falls back to a full unpickle, and never suggests one.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInput(path, what, "`cxr train --out RUN` writes RUN/best.pt and RUN/last.pt")
    if path.is_dir():
        raise CxrError(f"{path}: is a directory, not a {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found or "Unsupported global" in text:
            obj = f" ({found.group(1)})" if found else ""
            raise CxrError(
                f"{path}: not a plain-weights {what}: it holds a Python object{obj}, and cxr "
                "will not unpickle arbitrary objects (they can run code); only tensors and "
                "plain values are loaded"
            ) from None
        raise CxrError(
            f"{path}: not a loadable {what} (corrupt or not a torch file: "
            f"{_unpickler_detail(text)})"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CxrError(f"{path}: not a loadable {what} ({first})") from None


def load_checkpoint(path: str | Path) -> dict:
    """A checked cxr checkpoint: its keys, labels and preprocessing values (one-line errors)."""
    path = Path(path)
    ckpt = load_plain(path, "checkpoint")
    has_pre = isinstance(ckpt, dict) and (
        "preprocess" in ckpt or all(k in ckpt for k in _LEGACY_PREPROCESS)
    )
    if not has_pre or any(k not in ckpt for k in ("model", "arch", "labels")):
        raise CxrError(f"{path}: not a cxr checkpoint (missing model, arch, labels or preprocess)")
    labels = ckpt["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise CxrError(f"{path}: checkpoint labels must be a non-empty list of distinct names")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["arch"], str):
        raise CxrError(f"{path}: not a cxr checkpoint (model is not a state dict)")
    checkpoint_preprocess(ckpt, path)
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model of a checkpoint, weights loaded, in eval mode."""
    from cxr.training.models import create_model

    pre = checkpoint_preprocess(ckpt)
    model = create_model(ckpt["arch"], num_labels=len(ckpt["labels"]), in_chans=pre["in_chans"])
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

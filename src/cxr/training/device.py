"""Which torch device a `device` setting means, the same way for train, evaluate and predict."""

from __future__ import annotations

import re

import torch

from cxr.core.errors import CxrError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when a device is available, else the CPU; `cpu`; `cuda` or `cuda:N`, checked.

    Idempotent (a torch.device resolves to itself), so layers may each resolve what they are given.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    found = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not found:
        raise CxrError(f"device {str(name)!r}: must be auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise CxrError(f"device {str(name)!r}: no CUDA device is available (use auto or cpu)")
    if found.group(1) is not None and int(found.group(1)) >= torch.cuda.device_count():
        raise CxrError(
            f"device {str(name)!r}: there are only {torch.cuda.device_count()} CUDA devices"
        )
    return torch.device(text)

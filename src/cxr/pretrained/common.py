"""Small pieces every model source shares: names, hashes, devices, one-line messages.

Nothing here imports torch, torchxrayvision or transformers at module import: the registry (and
through it every command's --help) imports this module.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def first_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as one line: its type and the first line of its message, shortened."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def dir_name(text: str) -> str:
    """`text` made safe as one directory name (embed-<name>/): runs of other characters become
    one '-', and no leading dot or dash."""
    return _UNSAFE.sub("-", text).strip("-").lstrip(".") or "model"


def weights_sha256(path: str | Path) -> str | None:
    """SHA-256 of a weights file; of a directory's weight file (`*.safetensors`, else `*.bin`,
    else `*.pt`; several are hashed in name order, one digest for all). None when none is there."""
    import hashlib

    from cxr.core.hashing import file_sha256

    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        files = sorted(p for p in path.glob(pattern) if p.is_file())
        if len(files) == 1:
            return file_sha256(files[0])
        if files:
            digest = hashlib.sha256()
            for p in files:
                digest.update(f"{p.name} {file_sha256(p)}\n".encode())
            return digest.hexdigest()
    return None


def weight_files(path: str | Path) -> list[str]:
    """The files `weights_sha256` hashes (their names), for the provenance record."""
    path = Path(path)
    if path.is_file():
        return [path.name]
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        files = sorted(p.name for p in path.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def resolve_device(device):
    """The torch.device `device` names (`auto`, `cpu`, `cuda`, `cuda:N`), as everywhere in cxr."""
    from cxr.inference.runtime import resolve_device as resolve

    return resolve(device)


def import_torchxrayvision():
    """torchxrayvision, imported without its import-time `warnings.filterwarnings("ignore")`
    reaching the rest of the process (which would hide every later warning, cxr's own too).

    Once imported it is returned as it is: `catch_warnings` swaps the process-wide filter list,
    so entering it from the threads that decode images would race."""
    module = sys.modules.get("torchxrayvision")
    if module is not None:
        return module
    import torch  # noqa: F401  (first, outside the block: its own filters stay in force)

    with warnings.catch_warnings():
        import torchxrayvision

    return torchxrayvision


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """What a library prints to stdout (torchxrayvision's download bar and input-size notes) goes
    to stderr, or nowhere with --quiet: stdout is cxr's own output."""
    from cxr.core.progress import is_quiet

    target = io.StringIO() if is_quiet() else sys.stderr
    with contextlib.redirect_stdout(target):
        yield

"""Write outputs atomically: to a temporary name beside the target, then rename.

A crash, a kill or an exception never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cxr.core.errors import InputError
from cxr.core.privacy import mask_subject


@functools.cache
def _file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask); mkstemp would give 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _file_mode())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def output_errors(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OSError raised while writing `target` (a folder under that name, a file where a
    folder should be, a full disk) into a one-line InputError naming it, patient folder masked."""
    try:
        yield
    except OSError as exc:
        target = Path(target)
        reason = exc.strerror or type(exc).__name__
        if target.is_dir():
            reason = "it is a directory"
        else:
            for parent in target.parents:
                if parent.exists() or parent.is_symlink():
                    if not parent.is_dir():
                        reason = f"{mask_subject(str(parent))} is not a directory"
                    break
        raise InputError(f"{mask_subject(str(target))}: cannot write: {reason}") from None

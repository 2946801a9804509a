"""Expected failures.

Anything the user can cause (a missing file, a bad CSV, a wrong option) raises `CxrError` with a
one-line message naming the file and the problem; the CLI prints it and exits 1, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


class CxrError(Exception):
    """An expected failure, explained in one line."""


class InputError(CxrError):
    """An input file is missing, unreadable or malformed."""


class MissingInput(InputError):
    """A file or folder a stage needs is absent. The message names where it was looked for and the
    command that makes it; the CLI adds the data root in force when the path lies under it, else
    the absolute path of a relative one."""

    def __init__(self, path: str | os.PathLike[str], what: str, make: str) -> None:
        from cxr.core.privacy import mask_subject

        self.path = Path(path)
        self.what = what
        self.make = make
        super().__init__(f"{mask_subject(str(self.path))}: {what} not found; {make}")


RAW_MAKERS = (
    "`cxr download metadata` fetches MIMIC-CXR-JPG there, `cxr demo` writes a synthetic tree"
)
